"""The offline toy builders are deterministic and give adapters with B != 0."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from sqsd_fast.testing.toy_model import (
    ALL_PROJECTIONS,
    TOY_BENIGN_TEXTS,
    build_toy_adapter,
    build_toy_model,
    build_random_lora,
    build_toy_tokenizer,
    save_lora_adapters,
)


def test_tokenizer_is_deterministic_and_has_chat_template():
    a, b = build_toy_tokenizer(), build_toy_tokenizer()
    text = "Why is the sky blue? Sunlight scatters!"
    assert a(text).input_ids == b(text).input_ids
    assert a.pad_token_id is not None and a.eos_token_id is not None and a.pad_token_id != a.eos_token_id
    prompt = a.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    assert a.decode(a(text, add_special_tokens=False).input_ids) == text


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_model_and_adapter_are_deterministic(arch, tmp_path):
    tok = build_toy_tokenizer()
    m1 = build_toy_model(tok, hidden_size=32, intermediate_size=64, num_heads=2, arch=arch, seed=3)
    m2 = build_toy_model(tok, hidden_size=32, intermediate_size=64, num_heads=2, arch=arch, seed=3)
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(p, q), n
    before = {n: p.clone() for n, p in m1.named_parameters()}
    dirs = [build_toy_adapter(m, tok, TOY_BENIGN_TEXTS[:3], tmp_path / f"a{i}", r=2, alpha=4, steps=2, seed=5)
            for i, m in enumerate((m1, m2))]
    for n, p in m1.named_parameters():
        assert torch.equal(p, before[n]), f"build_toy_adapter modified the model ({n})"
    w1, w2 = (load_file(os.path.join(d, "adapter_model.safetensors")) for d in dirs)
    assert w1.keys() == w2.keys() and len(w1) == 2 * 2 * len(ALL_PROJECTIONS)
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
        assert w1[k].abs().max() > 0, f"{k} is all zeros"


def test_random_lora_is_seeded_saved_and_leaves_the_rng_alone(tmp_path):
    from peft import PeftModel

    tok = build_toy_tokenizer()

    def lora_weights(seed):
        model = build_toy_model(tok, hidden_size=32, intermediate_size=64, num_heads=2)
        peft_model = build_random_lora(model, ("state", "direction"), r=2, alpha=4, seed=seed)
        return peft_model, {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}

    torch.manual_seed(99)
    expected_next = torch.rand(3)
    torch.manual_seed(99)
    peft_model, w1 = lora_weights(7)
    assert torch.equal(torch.rand(3), expected_next), "build_random_lora moved the caller's RNG"
    _, w2 = lora_weights(7)
    _, w3 = lora_weights(8)
    assert len(w1) == 2 * 2 * 2 * len(ALL_PROJECTIONS)      # 2 adapters x (A, B) x 2 layers
    assert all(torch.equal(w1[n], w2[n]) for n in w1)
    assert not any(torch.equal(w1[n], w3[n]) for n in w1)
    assert all(w.abs().max() > 0 for w in w1.values())
    assert peft_model.active_adapter == "state"

    dirs = save_lora_adapters(peft_model, ("state", "direction"), tmp_path)
    for name, path in dirs.items():
        saved = load_file(os.path.join(path, "adapter_model.safetensors"))
        mine = {n: w for n, w in w1.items() if f".{name}." in n}
        assert len(saved) == len(mine) == 2 * 2 * len(ALL_PROJECTIONS)
        for key, tensor in saved.items():     # saved keys drop the adapter name
            match = [w for n, w in mine.items() if n.replace(f".{name}.", ".") == key]
            assert len(match) == 1 and torch.equal(tensor, match[0]), key
    base = build_toy_model(tok, hidden_size=32, intermediate_size=64, num_heads=2)
    loaded = PeftModel.from_pretrained(base, dirs["direction"], adapter_name="direction")
    got = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert all(torch.equal(got[n], w1[n]) for n in got) and len(got) == len(w1) // 2
