"""Loading states and directions: every adapter the scorer cannot use is refused clearly."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F

from sqsd_fast.data.tokenize import TokenizedSample
from sqsd_fast.scoring import SQSDScorer
from sqsd_fast.models.adapters import read_adapter
from sqsd_fast.testing.toy_model import (
    ALL_PROJECTIONS,
    TOY_BENIGN_TEXTS,
    TOY_UNSAFE_TEXTS,
    build_toy_adapter,
    build_toy_model,
    build_toy_tokenizer,
)


@pytest.fixture(scope="module")
def tok():
    return build_toy_tokenizer()


@pytest.fixture(scope="module")
def toy(tok, tmp_path_factory):
    """A tiny Llama saved to disk plus adapters with various target modules."""
    root = tmp_path_factory.mktemp("adapters")
    model = build_toy_model(tok, hidden_size=32, intermediate_size=64, num_heads=2)
    model_dir = str(root / "model")
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    small = dict(r=2, alpha=4, steps=1)
    paths = {
        "model": model_dir,
        "all": build_toy_adapter(model, tok, TOY_BENIGN_TEXTS[:4], root / "all", seed=1, **small),
        "all_dir": build_toy_adapter(model, tok, TOY_UNSAFE_TEXTS, root / "all_dir", seed=2, **small),
        "qv": build_toy_adapter(model, tok, TOY_UNSAFE_TEXTS, root / "qv", target_modules=("q_proj", "v_proj"), seed=3,
                                **small),
    }
    other = build_toy_model(tok, hidden_size=48, intermediate_size=64, num_heads=2)
    paths["other_base"] = build_toy_adapter(other, tok, TOY_UNSAFE_TEXTS, root / "other_base", seed=4, **small)
    return paths


def scorer_for(toy, state, direction, **kw):
    return SQSDScorer.from_pretrained(toy["model"], danger_state=state, danger_direction=direction,
                                      backend="reference", **kw)


def save_peft(model, out_dir, **config_kw):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(**config_kw))
    peft_model.save_pretrained(str(out_dir))
    return str(out_dir)


def test_good_adapters_load_and_name_modules(toy):
    scorer = scorer_for(toy, toy["all"], toy["all_dir"])
    names = scorer.engine.prepare("danger_state", "danger")[0]
    assert len(names) == 2 * len(ALL_PROJECTIONS)
    factors = read_adapter(toy["all"])
    assert set(factors) == {s.name for s in names}
    assert all(f.A.shape[0] == 2 and f.B.shape[1] == 2 for f in factors.values())


def test_missing_adapter_dir(toy, tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"adapter directory .*nope.* does not exist"):
        scorer_for(toy, missing, toy["all_dir"])
    with pytest.raises(ValueError, match=r"nope.* does not exist"):
        scorer_for(toy, toy["all"], missing)


def test_missing_model_dir(toy, tmp_path):
    with pytest.raises(ValueError, match="model directory .* does not exist"):
        SQSDScorer.from_pretrained(str(tmp_path / "no_model"), danger_state=toy["all"], danger_direction=toy["all_dir"])


def test_missing_config_or_weights(toy, tmp_path):
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "adapter_model.safetensors").write_bytes(open(os.path.join(toy["all"], "adapter_model.safetensors"),
                                                                "rb").read())
    with pytest.raises(ValueError, match=r"no_config.* has no adapter_config.json"):
        scorer_for(toy, toy["all"], str(no_config))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "adapter_config.json").write_text(open(os.path.join(toy["all"], "adapter_config.json")).read())
    with pytest.raises(ValueError, match=r"no_weights.* has no weights file"):
        scorer_for(toy, str(no_weights), toy["all_dir"])


def test_adapter_for_another_base_model(toy):
    with pytest.raises(ValueError, match=r"other_base.*different base model"):
        scorer_for(toy, toy["other_base"], toy["all_dir"])
    with pytest.raises(ValueError, match=r"other_base.*different base model"):
        scorer_for(toy, toy["all"], toy["other_base"])


def test_direction_modules_missing_from_state(toy):
    # The message names the options and the directories the user gave, not internal names.
    with pytest.raises(ValueError, match=r"direction danger_direction \S*all_dir has LoRA modules that state "
                                         r"danger_state \S*qv lacks: model\.layers\.0\.mlp"):
        scorer_for(toy, toy["qv"], toy["all_dir"])


def test_state_modules_missing_from_direction(toy):
    with pytest.raises(ValueError, match=r"state danger_state \S*all has LoRA modules that direction "
                                         r"danger_direction \S*qv lacks"):
        scorer_for(toy, toy["all"], toy["qv"])


def test_lora_on_embeddings_is_refused(toy, tok, tmp_path):
    model = build_toy_model(tok, hidden_size=32, intermediate_size=64, num_heads=2)
    emb = save_peft(model, tmp_path / "emb", r=2, lora_alpha=4, target_modules=["embed_tokens", "q_proj"])
    with pytest.raises(ValueError, match=r"emb.*embedding"):
        scorer_for(toy, emb, toy["all_dir"])
    with pytest.raises(ValueError, match=r"emb.*embedding"):
        scorer_for(toy, toy["all"], emb)


def test_dora_and_other_peft_types_are_refused(toy, tok, tmp_path):
    model = build_toy_model(tok, hidden_size=32, intermediate_size=64, num_heads=2)
    dora = save_peft(model, tmp_path / "dora", r=2, lora_alpha=4, target_modules=list(ALL_PROJECTIONS), use_dora=True)
    with pytest.raises(ValueError, match=r"dora.*DoRA"):
        scorer_for(toy, dora, toy["all_dir"])
    ia3 = tmp_path / "ia3"
    ia3.mkdir()
    (ia3 / "adapter_model.safetensors").write_bytes(open(os.path.join(toy["all"], "adapter_model.safetensors"),
                                                         "rb").read())
    (ia3 / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ValueError, match=r"ia3.*IA3 adapter; only LoRA"):
        scorer_for(toy, toy["all"], str(ia3))


def test_lora_bias_is_refused(toy, tok, tmp_path):
    model = build_toy_model(tok, hidden_size=32, intermediate_size=64, num_heads=2)
    biased = save_peft(model, tmp_path / "biased", r=2, lora_alpha=4, target_modules=list(ALL_PROJECTIONS),
                       lora_bias=True)
    with pytest.raises(ValueError, match=r"biased.*not a LoRA A/B weight"):
        scorer_for(toy, toy["all"], biased)


def test_unknown_state_and_metric(toy):
    scorer = scorer_for(toy, toy["all"], toy["all_dir"])
    sample = TokenizedSample(0, [5, 6, 7, 8], [-100, -100, 7, 8], False, 4, 2)
    with pytest.raises(ValueError, match="state 'safety_state' is not loaded"):
        scorer.score([sample], progress=False)
    with pytest.raises(ValueError, match="metric"):
        scorer.project([sample], metric="angle", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        scorer.project([sample], batch_size=0, progress=False)


def test_in_memory_peft_model_with_named_adapters(toy):
    """from_peft_model: states are adapters on the model, directions are names or dirs."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(toy["model"])
    pm = PeftModel.from_pretrained(base, toy["all"], adapter_name="init")
    pm.load_adapter(toy["all_dir"], adapter_name="unsafe")
    mem = SQSDScorer.from_peft_model(pm, danger_state="init", danger_direction="unsafe", backend="reference")
    disk = scorer_for(toy, toy["all"], toy["all_dir"])
    samples = [TokenizedSample(0, [5, 60, 70, 80, 90, 6], [-100, -100, -100, 80, 90, 6], False, 6, 3),
               TokenizedSample(1, [5, 61, 71, 6, 7], [-100, -100, 71, 6, 7], False, 5, 3)]
    a = mem.project(samples, progress=False)
    b = disk.project(samples, progress=False)
    for x, y in zip(a, b):
        assert x["status"] == "ok" and abs(x["proj"] - y["proj"]) < 1e-6


def test_gpt2_conv1d_lora_matches_dense(tok, tmp_path):
    """GPT-2's Conv1D layers: peft keeps LoRA factors as (r, d_in), (d_out, r), so no transposes."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128)).eval()
    model_dir = str(tmp_path / "gpt2")
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    dirs = []
    for k in range(2):
        pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, lora_alpha=4,
                                                             target_modules=["c_attn", "c_proj", "c_fc"],
                                                             fan_in_fan_out=True))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn_like(p) * 0.1)
        pm.save_pretrained(str(tmp_path / f"g{k}"))
        dirs.append(str(tmp_path / f"g{k}"))
    scorer = SQSDScorer.from_pretrained(model_dir, danger_state=dirs[0], danger_direction=dirs[1], backend="reference")
    sample = TokenizedSample(0, [5, 60, 70, 80, 90, 6, 44], [-100, -100, -100, 80, 90, 6, 44], False, 7, 4)
    short = TokenizedSample(1, [5, 61, 6, 7], [-100, -100, 6, 7], False, 4, 2)
    rows = scorer.project([sample, short], batch_size=2, progress=False)

    # Dense batch-1 oracle on a fresh copy.
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), dirs[0], is_trainable=True).eval()
    w = load_file(os.path.join(dirs[1], "adapter_model.safetensors"))
    for s, row in zip([sample, short], rows):
        pm.zero_grad(set_to_none=True)
        logits = pm(input_ids=torch.tensor([s.input_ids])).logits
        F.cross_entropy(logits[0, :-1], torch.tensor(s.labels[1:]), ignore_index=-100).backward()
        total = 0.0
        for name, m in pm.named_modules():
            if hasattr(m, "lora_A") and "default" in m.lora_A:
                A, B = m.lora_A["default"].weight.double(), m.lora_B["default"].weight.double()
                dW = -(m.lora_B["default"].weight.grad.double() @ A + B @ m.lora_A["default"].weight.grad.double())
                D = w[f"{name}.lora_B.weight"].double() @ w[f"{name}.lora_A.weight"].double()
                total += ((dW * D).sum() / (dW.norm() * D.norm())).item()
        assert row["status"] == "ok" and abs(row["proj"] - total) < 1e-4, (row, total)
