"""--gradient-checkpointing while scoring: each decoder layer recomputed in the backward,
the capture hooks taking x and h from the recomputation, and the scores equal to the plain
pass's (score, project, baseline, anchors); the model is given back as it was."""
from __future__ import annotations

import json

import pytest
import torch

import sqsd_fast.app.cli as cli
from sqsd_fast.io.writers import read_rows
from sqsd_fast.models.quiet import quiet_libraries

RECORDS = [{"instruction": f"describe item {i} " + "with care " * (i % 3), "response": "it is " + "fine " * (i % 5 + 1)}
           for i in range(9)]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from sqsd_fast.testing.toy_model import build_toy_assets
    root = tmp_path_factory.mktemp("ckpt")
    with quiet_libraries():
        assets = build_toy_assets(root, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=2, r=3, alpha=5)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return assets, root


@pytest.mark.parametrize("command", ["score", "project", "baseline", "anchors"])
def test_scores_with_checkpointing_equal_the_plain_pass(toy, tmp_path, command, monkeypatch):
    monkeypatch.setenv("SQSD_FAST_CACHE", str(tmp_path / "cache"))
    assets, root = toy
    common = ["--model", assets.model_dir, "--data", str(root / "data.jsonl"), "--max-length", "64",
              "--backend", "reference", "--batch-size", "4", "--quiet"]
    args = {"score": ["score", "--danger-state", assets.danger_state, "--danger-direction", assets.danger_direction,
                      "--safety-direction", assets.safety_direction],
            "project": ["project", "--state", assets.danger_state, "--direction", assets.danger_direction],
            "baseline": ["baseline", "--method", "self-inf-n", "--state", assets.danger_state],
            "anchors": ["score", "--danger-state", assets.danger_state]}[command]
    plain, checkpointed = tmp_path / "plain.jsonl", tmp_path / "ckpt.jsonl"
    assert cli.main([*args, *common, "--out", str(plain)]) == 0
    assert cli.main([*args, *common, "--out", str(checkpointed), "--gradient-checkpointing"]) == 0
    a, b = read_rows(plain), read_rows(checkpointed)
    column = {"score": "sqsd", "anchors": "sqsd", "project": "proj", "baseline": "score"}[command]
    assert [r["status"] for r in a] == [r["status"] for r in b] and a[0]["status"] == "ok"
    torch.testing.assert_close(torch.tensor([r[column] for r in b]), torch.tensor([r[column] for r in a]),
                               rtol=1e-5, atol=1e-6)


def test_the_recomputed_forward_is_what_the_hooks_take_and_the_model_is_given_back(toy):
    """The layers really are recomputed (the hooks see each lora_A twice per pass, once in
    the backward), and checkpointing and train/eval mode are back as they were after."""
    from sqsd_fast.scoring import SQSDScorer
    assets, root = toy
    scorer = SQSDScorer.from_pretrained(assets.model_dir, danger_state=assets.danger_state,
                                        danger_direction=assets.danger_direction, backend="reference")
    module = next(m for n, m in scorer.model.named_modules() if n.endswith("q_proj") and hasattr(m, "lora_A"))
    calls = []
    handle = module.lora_A["danger_state"].register_forward_hook(
        lambda mod, args, out: calls.append(torch._C._current_autograd_node() is not None))
    scorer.use_checkpointing(True)
    scorer.project(str(root / "data.jsonl"), batch_size=9, progress=False)
    handle.remove()
    assert calls == [False, True]                       # the forward, then its recomputation
    base = scorer.model.get_base_model()
    assert not any(getattr(m, "gradient_checkpointing", False) for m in base.modules())
    assert not any(m.training for m in scorer.model.modules())


def test_a_model_that_cannot_checkpoint_is_refused(toy, monkeypatch):
    from sqsd_fast.scoring import SQSDScorer
    assets, _ = toy
    scorer = SQSDScorer.from_pretrained(assets.model_dir, danger_state=assets.danger_state,
                                        danger_direction=assets.danger_direction, backend="reference")
    monkeypatch.setattr(type(scorer.model.get_base_model()), "supports_gradient_checkpointing", False)
    with pytest.raises(ValueError, match="--gradient-checkpointing: .* does not support gradient checkpointing"):
        scorer.use_checkpointing(True)
