"""The offline toy builders are deterministic and give adapters with B != 0."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from sqsd_fast.demo.toy_model import (
    ALL_PROJECTIONS,
    BENIGN_TEXTS,
    build_toy_adapter,
    build_toy_model,
    build_toy_tokenizer,
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
    dirs = [build_toy_adapter(m, tok, BENIGN_TEXTS[:3], tmp_path / f"a{i}", r=2, alpha=4, steps=2, seed=5)
            for i, m in enumerate((m1, m2))]
    for n, p in m1.named_parameters():
        assert torch.equal(p, before[n]), f"build_toy_adapter modified the model ({n})"
    w1, w2 = (load_file(os.path.join(d, "adapter_model.safetensors")) for d in dirs)
    assert w1.keys() == w2.keys() and len(w1) == 2 * 2 * len(ALL_PROJECTIONS)
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
        assert w1[k].abs().max() > 0, f"{k} is all zeros"
