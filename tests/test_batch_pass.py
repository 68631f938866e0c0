"""The response-token loss: the chunked head path against the plain one.

The chunked path (hidden states of the backbone, the LM head and cross-entropy recomputed
per chunk of positions in the backward pass) must give the same per-sample losses and the
same gradients as the model's own forward, on right-padded batches of ragged samples.
"""
from __future__ import annotations

import pytest
import torch

import sqsd_fast.engine.batch_pass as batch_pass
from sqsd_fast.data.tokenize import TokenizedSample
from sqsd_fast.engine.batch_pass import LossHead, loss_head, pack_batch, response_loss
from sqsd_fast.testing.toy_model import build_random_lora, build_toy_model, build_toy_tokenizer


def _samples(vocab, lengths, prompt=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        labels = [-100] * prompt + ids[prompt:]
        out.append(TokenizedSample(i, ids, labels, False, n, n - prompt - 1))
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_chunked_loss_equals_the_plain_loss_and_its_gradient(arch, monkeypatch):
    tok = build_toy_tokenizer()
    model = build_toy_model(tok, hidden_size=24, intermediate_size=40, num_layers=2, num_heads=2,
                            arch=arch, dtype=torch.float64)
    peft_model = build_random_lora(model, ["s"], r=3, alpha=6, target_modules=("q_proj", "down_proj"), seed=1)
    plan = loss_head(peft_model)
    assert plan.head is not None                  # llama and qwen2 heads are chunkable
    monkeypatch.setattr(batch_pass, "LOSS_CHUNK_LOGITS", 5 * len(tok))  # 5 rows: ragged chunks
    batch = pack_batch(_samples(len(tok), [17, 9, 13]), tok.pad_token_id, "cpu")

    def loss_and_grad(p):
        embeds = peft_model.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
        loss = response_loss(peft_model, embeds, batch, p)
        (grad,) = torch.autograd.grad((loss * torch.tensor([1.0, -2.0, 0.5],
                                                           dtype=loss.dtype)).sum(), embeds)
        return loss.detach(), grad

    chunked, plain = loss_and_grad(plan), loss_and_grad(LossHead(plan.keeps_logits))
    assert batch.keep.numel() > 5 and float(chunked[0].abs().min()) > 0
    torch.testing.assert_close(chunked[0], plain[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(chunked[1], plain[1], rtol=1e-10, atol=1e-14)


def test_lora_on_the_head_or_an_unknown_architecture_takes_the_plain_path():
    tok = build_toy_tokenizer()
    model = build_toy_model(tok, hidden_size=16, intermediate_size=24, num_layers=1, num_heads=2)
    with_head = build_random_lora(model, ["s"], r=2, alpha=4, target_modules=("q_proj", "lm_head"), seed=2)
    assert loss_head(with_head).head is None
    other = build_toy_model(tok, hidden_size=16, intermediate_size=24, num_layers=1, num_heads=2)
    other.config.model_type = "gemma2"
    assert loss_head(build_random_lora(other, ["s"], r=2, alpha=4, target_modules=("q_proj",), seed=3)).head is None
