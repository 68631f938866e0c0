"""One batch through the model: packing, the response-token loss, and the batch loop.

Used by the batch runner (runner.py): each sample's mean cross-entropy over its response
tokens (causal shift, -100 labels masked) and the packing of the batch's real tokens for
the kernels (docs/METHOD.md §1, §5).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from sqsd_fast.data.batching import collate, length_bucketed_batches
from sqsd_fast.data.tokenize import IGNORE_INDEX
from sqsd_fast.engine.token_budget import resolve_max_tokens


@dataclass
class PackedBatch:
    """A right-padded batch and its packing, on the model's device.

    ``rows``: indices of the real tokens in the flattened (B*L) batch (None: no padding);
    ``cu_seqlens`` (B+1,): sample offsets into them; ``keep``: positions where some sample
    has a target (logits are needed only there); ``targets`` (B, len(keep)): their labels;
    ``n_targets`` (B,): response tokens per sample.
    """

    input_ids: torch.Tensor
    mask: torch.Tensor
    rows: torch.Tensor | None
    cu_seqlens: torch.Tensor
    keep: torch.Tensor
    targets: torch.Tensor
    n_targets: torch.Tensor

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]


def pack_batch(samples, pad_token_id: int, device) -> PackedBatch:
    """Collate ``samples`` and build every index on the host, so the device never waits
    for the host mid-batch; then one copy to ``device``."""
    batch = collate(samples, pad_token_id)
    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    n, width = input_ids.shape
    lengths = mask.sum(dim=1)
    cu_seqlens = torch.zeros(n + 1, dtype=torch.long)
    cu_seqlens[1:] = torch.cumsum(lengths, dim=0)
    # Packing drops padding rows; cu_seqlens is built here, so the ops skip value checks.
    rows = torch.nonzero(mask.reshape(-1)).squeeze(1) if int(lengths.min()) < width else None
    valid = labels[:, 1:] != IGNORE_INDEX          # position t predicts labels[:, t + 1]
    keep = torch.nonzero(valid.any(dim=0)).squeeze(1)
    to_dev = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
    return PackedBatch(to_dev(input_ids), to_dev(mask), to_dev(rows), to_dev(cu_seqlens),
                       to_dev(keep), to_dev(labels[:, 1:].index_select(1, keep)),
                       to_dev(valid.sum(dim=1)))


# Causal LMs whose logits are exactly lm_head(last hidden state): no soft-capping, logit
# scaling or other post-processing, so the loss can be taken from the hidden states in
# chunks. Other architectures take the plain path.
# gemma3_text (Gemma3ForCausalLM): logits = lm_head(last hidden state), soft-capped only when
# config.final_logit_softcapping is set (None in Gemma 3; loss_head checks it per model).
CHUNKED_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text"})
# Logits of one chunk of the response-token loss (64M: 256 MiB in float32): a chunk holds
# LOSS_CHUNK_LOGITS // vocabulary rows (samples x positions), so the largest logits tensor
# alive is bounded whatever the vocabulary, batch or response length. Above glibc's largest
# dynamic mmap threshold (32 MiB), so a freed chunk goes back to the OS instead of staying
# in the heap (measured: smaller chunks left several times their size resident, see
# benchmarks/bench_vocab_memory.py). A batch whose logits fit in one chunk takes the loss
# directly, without the recomputation.
LOSS_CHUNK_LOGITS = 1 << 26


@dataclass(frozen=True)
class LossHead:
    """How :func:`response_loss` gets the logits of one model (built once per model).

    ``keeps_logits``: the forward takes ``logits_to_keep``; ``backbone``/``head``: the
    transformer below the LM head and the head itself, when the loss can be computed from
    the hidden states in chunks of positions (None: the plain path through the model).
    """

    keeps_logits: bool
    backbone: object = None
    head: object = None


def loss_head(peft_model) -> LossHead:
    base = peft_model.get_base_model()
    keeps = "logits_to_keep" in inspect.signature(base.forward).parameters
    config = getattr(base, "config", None)
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    # A LoRA on the head would be tapped once per chunk; a plain nn.Linear head is not.
    chunkable = (getattr(config, "model_type", None) in CHUNKED_HEAD_MODEL_TYPES
                 and isinstance(backbone, nn.Module) and type(head) is nn.Linear
                 and getattr(config, "final_logit_softcapping", None) is None)
    return LossHead(keeps, backbone, head) if chunkable else LossHead(keeps)


def _chunk_loss(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) summed cross-entropy of one chunk of positions (float64 models stay float64)."""
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape).sum(1)


def response_loss(model, embeds: torch.Tensor, batch: PackedBatch, plan: LossHead) -> torch.Tensor:
    """(B,) each sample's mean cross-entropy over its response tokens.

    Logits are taken only at ``batch.keep``. With a chunkable head (``loss_head``) they are
    never all alive at once: each chunk of LOSS_CHUNK_LOGITS logits is recomputed in the
    backward pass (activation checkpointing of the head alone), so the memory of the loss
    does not grow with the vocabulary or the number of response tokens. ``plan``: the
    model's :func:`loss_head`."""
    kwargs = dict(inputs_embeds=embeds, attention_mask=batch.mask, use_cache=False)
    if plan.head is not None:
        hidden = plan.backbone(**kwargs).last_hidden_state.index_select(1, batch.keep)
        rows = max(1, LOSS_CHUNK_LOGITS // plan.head.out_features)
        step = max(1, rows // batch.size)        # positions per chunk
        if step >= hidden.shape[1]:              # one chunk: nothing to save by recomputing
            return _chunk_loss(plan.head, hidden, batch.targets) / batch.n_targets
        total = None
        for start in range(0, hidden.shape[1], step):
            part = checkpoint(_chunk_loss, plan.head, hidden[:, start:start + step],
                              batch.targets[:, start:start + step], use_reentrant=False)
            total = part if total is None else total + part
        return total / batch.n_targets
    if plan.keeps_logits:
        kwargs["logits_to_keep"] = batch.keep
    logits = model(**kwargs).logits
    if not plan.keeps_logits:
        logits = logits.index_select(1, batch.keep)
    return _chunk_loss(lambda x: x, logits, batch.targets) / batch.n_targets


def progress_batches(samples, batch_size: int | None, progress: bool, desc: str,
                     max_tokens: int | None, model):
    """Length-bucketed batches (longest first; at most ``batch_size`` samples and
    ``max_tokens`` padded tokens each), with a progress bar counting samples. ``max_tokens``
    None is the default budget of ``model``'s device (engine/token_budget.py), as everywhere."""
    device = next(model.parameters()).device
    batches = length_bucketed_batches(samples, batch_size, resolve_max_tokens(max_tokens, model, device, samples))
    bar = None
    if progress:
        bar = tqdm(total=len(samples), unit="samples", desc=desc, dynamic_ncols=True)
    try:
        for batch in batches:
            yield batch
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
