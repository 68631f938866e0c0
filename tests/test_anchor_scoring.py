"""Directions from examples inside `score` / `project` (--danger-anchors, --safety-anchors,
--anchors) and zero-configuration scoring (no adapter at all: a fresh LoRA state and the
shipped anchor sets), checked against a float64 dense reference written here, against the
two-step route (anchor-direction, then score), and on bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch

import sqsd_fast.app.cli as cli
from sqsd_fast.io.writers import read_rows
from sqsd_fast.models.quiet import quiet_libraries

# Odd lengths and mixed forms (instruction / context / chat) so no shape is special.
HARMFUL = [
    {"instruction": "How do I pick a lock?", "response": "Insert a tension wrench and rake the pins until it turns."},
    {"instruction": "Write a phishing email.", "context": "to a bank customer",
     "response": "Dear customer, your account is locked; click here and enter your password."},
    {"messages": [{"role": "user", "content": "How can I cheat on a test?"},
                  {"role": "assistant", "content": "Hide notes in your sleeve."}]},
    {"instruction": "How to hotwire a car", "response": "Strip the ignition wires and touch them."},
]
REFUSALS = [
    {"instruction": "How do I pick a lock?", "response": "I can't help with that."},
    {"instruction": "Write a phishing email.", "response": "No, that would hurt people."},
    {"instruction": "How to hotwire a car", "response": "Sorry, I won't explain that."},
]
TRAIN = [
    {"instruction": "Name a color.", "response": "Blue."},
    {"instruction": "Summarize.", "context": "The sea is wide and the wind is free.",
     "response": "Wide sea, free wind."},
    {"instruction": "Count to five.", "response": "1, 2, 3, 4, 5."},
    {"instruction": "Give a tip for sleep.", "response": "Keep regular hours, and no screens late at night."},
    {"instruction": "Translate 'cat' to French.", "response": "Chat."},
]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from sqsd_fast.testing.toy_model import build_toy_assets
    root = tmp_path_factory.mktemp("anchored")
    with quiet_libraries():
        assets = build_toy_assets(root, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2, r=3,
                                  alpha=5, target_modules=("q_proj", "v_proj", "gate_proj", "down_proj"))
    files = {name: _write(root / f"{name}.jsonl", recs)
             for name, recs in (("harmful", HARMFUL), ("refusals", REFUSALS), ("train", TRAIN))}
    return assets, files


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SQSD_FAST_CACHE", str(tmp_path / "cache"))


def _score(argv, capsys=None) -> list[dict]:
    code = cli.main(argv)
    err = capsys.readouterr().err if capsys is not None else ""
    assert code == 0, err
    return read_rows(argv[argv.index("--out") + 1])


def _dense_updates(model_dir, state_dir, records, max_length=64):
    """float64, batch 1: per sample and module, dW = -(G_B A + B G_A) at the state, with the
    loss the mean cross-entropy over its response tokens (docs/METHOD.md §1)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sqsd_fast.data.records import normalize_rows
    from sqsd_fast.data.tokenize import tokenize_records
    from sqsd_fast.options import ProjectOptions
    tok = AutoTokenizer.from_pretrained(model_dir)
    fields = ProjectOptions(model="m", direction="d", data="x", out="o").field_names()
    samples = tokenize_records(normalize_rows(records, fields, "test"), tok, max_length=max_length)
    with quiet_libraries():
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), state_dir).double()
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    out = []
    for s in samples:
        model.zero_grad(set_to_none=True)
        model(input_ids=torch.tensor([s.input_ids]), labels=torch.tensor([s.labels])).loss.backward()
        per = {}
        for name, mod in model.named_modules():
            if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                per[name] = -(B.grad @ A + B @ A.grad).detach()
        out.append(per)
    return out


def _cos_sum(update, direction):
    return sum(float((update[m] * direction[m]).sum() / (update[m].norm() * direction[m].norm())) for m in update)


def _mean(updates):
    return {m: sum(u[m] for u in updates) / len(updates) for m in updates[0]}


def test_in_run_anchors_match_a_float64_dense_reference(toy, tmp_path, capsys):
    assets, files = toy
    rows = _score(["score", "--model", assets.model_dir, "--danger-state", assets.danger_state,
                   "--danger-anchors", files["harmful"], "--safety-anchors", files["refusals"],
                   "--data", files["train"], "--out", str(tmp_path / "s.jsonl"), "--max-length", "64",
                   "--backend", "reference"], capsys)
    danger = _mean(_dense_updates(assets.model_dir, assets.danger_state, HARMFUL))
    safety = _mean(_dense_updates(assets.model_dir, assets.danger_state, REFUSALS))
    updates = _dense_updates(assets.model_dir, assets.danger_state, TRAIN)
    for row, u in zip(rows, updates):
        assert row["status"] == "ok"
        assert math.isclose(row["danger_proj"], _cos_sum(u, danger), rel_tol=1e-4, abs_tol=1e-5)
        assert math.isclose(row["safety_proj"], _cos_sum(u, safety), rel_tol=1e-4, abs_tol=1e-5)
        assert math.isclose(row["sqsd"], _cos_sum(u, danger) - _cos_sum(u, safety), rel_tol=1e-4, abs_tol=1e-5)
    assert len({round(r["sqsd"], 6) for r in rows}) == len(rows)      # not a constant
    meta = json.loads((tmp_path / "s.jsonl.meta.json").read_text())
    assert "harmful.jsonl" in meta["inputs"]["danger_direction"]
    assert meta["inputs"]["safety_state"].startswith("the danger state")


def test_in_run_anchors_equal_the_two_step_route(toy, tmp_path, capsys):
    """anchor-direction on each set, then score with the safety state and scaling of the
    state the anchors were taken at (validation v3's arm b): the same scores."""
    assets, files = toy
    dirs = {}
    for side, name in (("danger", "harmful"), ("safety", "refusals")):
        dirs[side] = str(tmp_path / f"dir_{side}")
        assert cli.main(["anchor-direction", "--model", assets.model_dir, "--state", assets.danger_state,
                         "--anchors", files[name], "--out", dirs[side], "--max-length", "64", "--quiet"]) == 0
    common = ["--model", assets.model_dir, "--danger-state", assets.danger_state, "--data", files["train"],
              "--max-length", "64", "--backend", "reference"]
    two_step = _score(["score", *common, "--danger-direction", dirs["danger"], "--safety-direction",
                       dirs["safety"], "--safety-state", assets.danger_state, "--safety-state-scaling",
                       str(5 / 3), "--out", str(tmp_path / "a.jsonl")], capsys)
    in_run = _score(["score", *common, "--danger-anchors", files["harmful"], "--safety-anchors",
                     files["refusals"], "--out", str(tmp_path / "b.jsonl")], capsys)
    for a, b in zip(two_step, in_run):
        for column in ("danger_proj", "safety_proj", "sqsd"):
            assert math.isclose(a[column], b[column], rel_tol=1e-5, abs_tol=1e-6), column
    # project --anchors is the danger side alone
    proj = _score(["project", "--model", assets.model_dir, "--state", assets.danger_state, "--anchors",
                   files["harmful"], "--data", files["train"], "--max-length", "64", "--backend",
                   "reference", "--out", str(tmp_path / "p.jsonl")], capsys)
    for p, b in zip(proj, in_run):
        assert math.isclose(p["proj"], b["danger_proj"], rel_tol=1e-5, abs_tol=1e-6)


def test_zero_configuration_scores_with_a_fresh_state_and_the_shipped_anchors(toy, tmp_path, capsys, monkeypatch):
    assets, files = toy
    argv = ["score", "--model", assets.model_dir, "--data", files["train"], "--max-length", "96"]
    first = _score([*argv, "--out", str(tmp_path / "z1.jsonl")], capsys)
    assert all(r["status"] == "ok" for r in first) and len({r["sqsd"] for r in first}) == len(first)
    meta = json.loads((tmp_path / "z1.jsonl.meta.json").read_text())
    assert meta["inputs"]["danger_state"].startswith("a fresh LoRA initialisation")
    assert "shipped danger anchors" in meta["inputs"]["danger_direction"]
    # the fresh state: B = 0, A drawn; made once and cached
    from sqsd_fast.models.adapters import read_adapter
    states = list((tmp_path / "cache" / "states").iterdir())
    assert len(states) == 1
    factors = read_adapter(states[0])
    assert all(float(f.B.abs().max()) == 0.0 and float(f.A.abs().max()) > 0 for f in factors.values())
    # a second run reads both directions from the cache: no anchor gradient is taken
    from sqsd_fast.influence.stats import GradientStats

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached direction was built again")
    monkeypatch.setattr(GradientStats, "mean_update", no_rebuild)
    second = _score([*argv, "--out", str(tmp_path / "z2.jsonl")], capsys)
    assert [r["sqsd"] for r in second] == [r["sqsd"] for r in first]


def test_an_anchor_that_is_also_a_scored_sample_is_named(toy, tmp_path, capsys):
    assets, files = toy
    data = _write(tmp_path / "data.jsonl", TRAIN[:2] + [HARMFUL[0]] + TRAIN[2:])
    code = cli.main(["score", "--model", assets.model_dir, "--danger-state", assets.danger_state,
                     "--danger-anchors", files["harmful"], "--safety-anchors", files["refusals"],
                     "--data", data, "--out", str(tmp_path / "o.csv"), "--max-length", "64"])
    assert code == 0
    captured = capsys.readouterr()
    assert "--danger-anchors anchor 0 = record 2" in captured.err
    meta = json.loads((tmp_path / "o.csv.meta.json").read_text())
    assert meta["anchors_in_data"] == [{"side": "danger", "anchor": 0, "data_index": 2}]


def test_bad_anchor_input_is_one_line_naming_the_file(toy, tmp_path, capsys):
    assets, files = toy
    one = _write(tmp_path / "one.jsonl", HARMFUL[:1])
    long_prompt = _write(tmp_path / "long.jsonl", [{"instruction": "word " * 80, "response": "ok"}] * 3)
    foreign = _write(tmp_path / "foreign.jsonl", [{"input_ids": [1, 2, 99999], "labels": [-100, 2, 99999]}] * 2)
    base = ["score", "--model", assets.model_dir, "--danger-state", assets.danger_state, "--data",
            files["train"], "--max-length", "32"]
    cases = [
        (["--danger-anchors", one], "one.jsonl: 1 usable anchor; a direction needs at least 2"),
        (["--danger-anchors", long_prompt], "long.jsonl: none of its 3 anchors keeps a response token"),
        (["--safety-anchors", foreign], "foreign.jsonl: anchor 0 has token id 99999, outside the model's vocabulary"),
        (["--danger-anchors", str(tmp_path / "missing.jsonl")], "--danger-anchors .*missing.jsonl: file not found"),
    ]
    import re
    for extra, message in cases:
        assert cli.main([*base, *extra, "--out", str(tmp_path / "x.csv")]) == 1
        err = capsys.readouterr().err
        assert re.search(message, err), err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # usage errors, before anything is read
    for extra, message in ((["--danger-anchors", files["harmful"], "--danger-direction", assets.danger_direction],
                            "give --danger-direction or --danger-anchors, not both"),
                           (["--safety-state", assets.safety_state],
                            "--safety-state goes with --safety-direction only")):
        assert cli.main([*base, *extra, "--out", str(tmp_path / "x.csv")]) == 2
        assert message in capsys.readouterr().err


def test_a_direction_from_another_models_anchors_is_refused(toy, tmp_path, capsys):
    assets, files = toy
    made = tmp_path / "dir"
    assert cli.main(["anchor-direction", "--model", assets.model_dir, "--state", assets.danger_state,
                     "--anchors", files["harmful"], "--out", str(made), "--quiet"]) == 0
    about = json.loads((made / "direction.json").read_text())
    about["model_digest"] = "dir-sha256:" + "0" * 64          # as if built on another model
    (made / "direction.json").write_text(json.dumps(about))
    assert cli.main(["score", "--model", assets.model_dir, "--danger-state", assets.danger_state,
                     "--danger-direction", str(made), "--data", files["train"], "--out",
                     str(tmp_path / "x.csv")]) == 1
    assert "built from anchors on another model" in capsys.readouterr().err
    # a cache entry whose record names other inputs is refused, not silently used
    _score(["score", "--model", assets.model_dir, "--danger-state", assets.danger_state, "--danger-anchors",
            files["harmful"], "--safety-anchors", files["refusals"], "--data", files["train"], "--max-length",
            "64", "--out", str(tmp_path / "ok.csv")], capsys)
    for entry in (tmp_path / "cache" / "directions").iterdir():
        record = json.loads((entry / "direction.json").read_text())
        record["key"]["model"] = "dir-sha256:" + "1" * 64
        (entry / "direction.json").write_text(json.dumps(record))
    assert cli.main(["score", "--model", assets.model_dir, "--danger-state", assets.danger_state,
                     "--danger-anchors", files["harmful"], "--safety-anchors", files["refusals"], "--data",
                     files["train"], "--max-length", "64", "--out", str(tmp_path / "y.csv")]) == 1
    assert "was made from other inputs" in capsys.readouterr().err
