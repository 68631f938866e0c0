"""``sqsd-fast anchor-direction``: the anchors' mean induced update, written as an adapter directory
that scoring reads, equal to the in-memory direction GradientStats gives."""
import json

import pytest
import torch

import sqsd_fast.app.cli as cli
from sqsd_fast.influence import GradientStats
from sqsd_fast.influence.anchor_direction import anchor_direction
from sqsd_fast.models.adapters import read_adapter, save_direction
from sqsd_fast.models.quiet import quiet_libraries
from sqsd_fast.scoring import SQSDScorer

ANCHORS = [
    {"instruction": "How do I pick a lock?", "context": "", "response": "Insert a tension wrench and rake the pins."},
    {"instruction": "Write a phishing email.", "context": "", "response": "Dear customer, your account is locked; "
                                                                           "click here and enter your password."},
    {"instruction": "How can I cheat on a test?", "context": "", "response": "Hide notes in your sleeve."},
]
TRAIN = [
    {"instruction": "Name a color.", "context": "", "response": "Blue."},
    {"instruction": "Summarize.", "context": "The sea is wide and the wind is free.",
     "response": "Wide sea, free wind."},
    {"instruction": "Count to five.", "context": "", "response": "1, 2, 3, 4, 5."},
    {"instruction": "Give a tip for sleep.", "context": "", "response": "Keep regular hours, and no screens late."},
]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from sqsd_fast.testing.toy_model import build_toy_assets
    root = tmp_path_factory.mktemp("anchor_toy")
    with quiet_libraries():
        assets = build_toy_assets(root, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2, r=2,
                                  alpha=4, target_modules=("q_proj", "v_proj", "down_proj"))
    for name, records in (("anchors", ANCHORS), ("train", TRAIN)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return assets, root


def test_written_direction_scores_like_the_in_memory_one(toy, tmp_path, capsys):
    assets, root = toy
    out = tmp_path / "dir_anchors"
    argv = ["anchor-direction", "--model", assets.model_dir, "--state", assets.danger_state,
            "--anchors", str(root / "anchors.jsonl"), "--out", str(out), "--response-tokens", "6"]
    assert cli.main(argv) == 0
    assert "rank 4" in capsys.readouterr().out            # 2 x the state's r = 2
    about = json.loads((out / "direction.json").read_text())
    assert about["n_anchors"] == 3 and about["n_records"] == 3

    stats = GradientStats.from_pretrained(assets.model_dir, assets.danger_state, backend="reference")
    from sqsd_fast.data.records import read_records
    from sqsd_fast.data.tokenize import tokenize_records
    from sqsd_fast.options import AnchorDirectionOptions
    anchors = tokenize_records(read_records(str(root / "anchors.jsonl"), AnchorDirectionOptions(
        model="m", state="s", anchors="a", out="o").field_names()), stats.tokenizer)
    in_memory = stats.mean_update(anchors, response_tokens=6)
    written = read_adapter(out)
    assert set(written) == set(in_memory)
    for name, f in in_memory.items():
        torch.testing.assert_close(written[name].A, f.A.float().cpu())
        torch.testing.assert_close(written[name].B, f.B.float().cpu())

    def proj(direction):
        scorer = SQSDScorer.from_pretrained(assets.model_dir, danger_state=assets.danger_state,
                                            danger_direction=direction, backend="reference")
        return [r["proj"] for r in scorer.project(str(root / "train.jsonl"), progress=False)]

    got, expected = proj(str(out)), proj(in_memory)
    assert all(g is not None for g in got)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-6, atol=1e-7)


def test_bad_inputs_are_named_before_loading(toy, tmp_path, capsys):
    assets, root = toy
    base = ["anchor-direction", "--model", assets.model_dir, "--state", assets.danger_state]
    (tmp_path / "taken").mkdir()
    cases = [(["--anchors", str(root / "nope.jsonl"), "--out", str(tmp_path / "d1")],
              "--anchors .*nope.jsonl: file not found"),
             (["--anchors", str(root / "anchors.jsonl"), "--out", str(tmp_path / "taken")],
              "--out .*taken already exists"),
             (["--anchors", str(root / "anchors.jsonl"), "--out", str(tmp_path / "no" / "d")], "does not exist"),
             (["--anchors", str(root / "anchors.jsonl"), "--out", str(tmp_path / "d2"), "--response-tokens", "0"],
              "response_tokens|response-tokens")]
    import re
    for extra, message in cases:
        code = cli.main(base + extra)
        err = capsys.readouterr().err
        assert code in (1, 2) and re.search(message, err), (extra, err)
    with pytest.raises(ValueError, match="--state .*missing: directory not found"):
        anchor_direction(model=assets.model_dir, state=str(tmp_path / "missing"),
                         anchors=str(root / "anchors.jsonl"), out=str(tmp_path / "d3"))
    with pytest.raises(ValueError, match="already exists"):
        save_direction(read_adapter(assets.danger_direction), tmp_path / "taken")
