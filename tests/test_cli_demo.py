"""`python -m sqsd_fast.demo`: the toy demo (--toy) and the real demo's plumbing.

The toy (offline, deterministic, honest about being a toy): one module-scoped run of a
few seconds; the tests check what it writes and prints. The real demo (SmolLM2) takes
minutes, so its code path runs here on an injected toy model directory (--model-dir):
the same zero-configuration scoring (fresh state and anchor directions, cached), subsets
and report, in seconds. A
fetch that fails must fall back to the toy, saying so.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from sqsd_fast.testing.assertions import require_module

from sqsd_fast.io.writers import read_rows

require_module("peft")

WINDOWS, WINDOW = 5, 6   # the demo cuts S1..S5 of 6 samples each


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Run the demo once; return (out_dir, stdout, data rows, score rows)."""
    from sqsd_fast.demo.__main__ import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["--toy", "--out-dir", str(out)]) == 0
    return out, buf.getvalue(), read_rows(out / "demo_data.jsonl"), read_rows(out / "scores.jsonl")


def test_writes_its_records_and_a_loadable_toy_setup(demo):
    from sqsd_fast.demo.demo_data import DEMO_RECORDS

    out, _, data, _ = demo
    assert data == DEMO_RECORDS                          # the scored file is the demo's records
    assert (out / "model" / "config.json").is_file() and (out / "model" / "tokenizer.json").is_file()
    for adapter in ("danger_state", "danger_direction", "safety"):
        assert (out / adapter / "adapter_config.json").is_file(), adapter
        assert (out / adapter / "adapter_model.safetensors").stat().st_size > 0, adapter
    leftovers = {p.name for p in out.glob("scores.jsonl.*")}
    assert leftovers == {"scores.jsonl.meta.json"}      # the run record; no sidecars or lock


def test_scores_every_record_in_order_with_ranks_1_to_n(demo):
    out, _, data, rows = demo
    n = len(data)
    assert [r["index"] for r in rows] == list(range(n))
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("danger_proj", "safety_proj", "sqsd"))
        assert math.isclose(r["sqsd"], r["danger_proj"] - r["safety_proj"], abs_tol=1e-12)
        assert r["n_response_tokens"] > 0 and r["n_tokens"] > r["n_response_tokens"]
    assert sorted(r["rank"] for r in rows) == list(range(1, n + 1))
    riskiest_first = sorted(rows, key=lambda r: (-r["sqsd"], r["index"]))
    assert [r["rank"] for r in riskiest_first] == list(range(1, n + 1))        # 1 = riskiest
    assert len({r["sqsd"] for r in rows}) > n // 2                               # not constant
    csv_rows = read_rows(out / "scores.csv")
    assert [int(r["rank"]) for r in csv_rows] == [r["rank"] for r in rows]
    assert all(math.isclose(float(c["sqsd"]), r["sqsd"], rel_tol=1e-12)
               for c, r in zip(csv_rows, rows))


def test_prints_the_toy_warning_and_the_riskiest_samples(demo):
    _, text, data, rows = demo
    assert "RANDOM weights" in text and "MEAN NOTHING" in text
    assert "sqsd-fast score --model" in text                  # the real-model command
    top = min(rows, key=lambda r: r["rank"])
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("#1 "))
    assert f"{top['sqsd']:+.4f}" in line and f"[index {top['index']}]" in line
    assert data[top["index"]]["instruction"][:30] in line
    assert f"scoring {len(data)} demo instructions" in text


def test_subsets_are_windows_of_the_ranking(demo):
    out, text, data, rows = demo
    sub = out / "subsets"
    by_rank = sorted(rows, key=lambda r: r["rank"])
    meta = json.loads((sub / "subsets.json").read_text())
    assert [s["name"] for s in meta["subsets"]] == [f"S{k}" for k in range(1, WINDOWS + 1)]
    starts = [s["start"] for s in meta["subsets"]]
    assert starts[0] == 0 and starts[-1] == len(rows) - WINDOW and starts == sorted(set(starts))
    for s in meta["subsets"]:
        window = by_rank[s["start"]:s["stop"]]
        assert s["stop"] - s["start"] == WINDOW
        assert s["indices"] == [r["index"] for r in window], s["name"]
        assert math.isclose(s["mean_score"], sum(r["sqsd"] for r in window) / WINDOW, rel_tol=1e-9)
        assert read_rows(sub / s["file"]) == [data[r["index"]] for r in window], s["name"]
        assert f"{s['name']}: ranks {s['start'] + 1}-{s['stop']}" in text
    assert (sub / "subsets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_in_the_same_directory_gives_the_same_scores(demo):
    from sqsd_fast.demo.__main__ import main

    out, _, _, rows = demo
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--toy", "--out-dir", str(out)]) == 0
    assert read_rows(out / "scores.jsonl") == rows


def test_toy_refuses_a_model_dir(capsys):
    from sqsd_fast.demo.__main__ import main

    assert main(["--toy", "--model-dir", "somewhere"]) == 2
    assert "--model-dir is for the real demo" in capsys.readouterr().err


# ------------------------------------------------------------------ the real demo's path


def test_shipped_anchor_sets_are_paired_and_disjoint_from_the_demo_and_the_evaluation():
    """The zero-configuration directions' anchors: 100 AdvBench requests with their "Sure,
    here is" targets, the same requests refused; none is a demo record, and AdvBench rows
    400..519 (the validation's evaluation prompts) are not among them."""
    from sqsd_fast.anchors import DEFAULT_DANGER_ANCHORS, DEFAULT_SAFETY_ANCHORS
    from sqsd_fast.demo.demo_data import DEMO_RECORDS

    danger, safety = read_rows(DEFAULT_DANGER_ANCHORS), read_rows(DEFAULT_SAFETY_ANCHORS)
    assert len(danger) == len(safety) == 100
    assert [r["instruction"] for r in danger] == [r["instruction"] for r in safety]
    assert all(r["response"].startswith("Sure, here") for r in danger)
    assert not any(r["response"].startswith("Sure") for r in safety)
    assert len({r["response"] for r in safety}) >= 5                    # several refusal styles
    assert not {r["instruction"] for r in DEMO_RECORDS} & {r["instruction"] for r in danger}
    advbench = Path(__file__).resolve().parents[2] / "shared" / "data" / "advbench_harmful_behaviors_targets.jsonl"
    if advbench.exists():
        rows = read_rows(advbench)
        assert [r["instruction"] for r in danger] == [r["goal"] for r in rows[:100]]
        assert not {r["goal"] for r in rows[400:520]} & {r["instruction"] for r in danger}


@pytest.fixture(scope="module")
def toy_model_dir(tmp_path_factory):
    """A tiny random-weight model + tokenizer directory standing in for SmolLM2."""
    from sqsd_fast.testing.toy_model import build_toy_model, build_toy_tokenizer

    path = tmp_path_factory.mktemp("toy_model")
    tokenizer = build_toy_tokenizer()
    with contextlib.redirect_stderr(io.StringIO()):
        build_toy_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _run_demo(argv):
    """(exit code, stdout + stderr)."""
    from sqsd_fast.demo.__main__ import main

    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, buf.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def real_path(toy_model_dir, tmp_path_factory):
    """The real demo's code path on the toy model, run twice (the second reuses the cache)."""
    base = tmp_path_factory.mktemp("real_demo")
    argv = ["--model-dir", str(toy_model_dir), "--out-dir", str(base / "out"),
            "--cache-dir", str(base / "cache"), "--no-progress"]
    rc, first = _run_demo(argv)
    assert rc == 0, first
    first_rows = read_rows(base / "out" / "scores.jsonl")
    rc, second = _run_demo(argv)
    assert rc == 0, second
    return base, first, second, first_rows


def test_real_path_scores_with_no_configuration_and_caches_its_inputs(real_path):
    base, first, second, _ = real_path
    out = base / "out"
    record = json.loads((out / "demo_run.json").read_text())
    assert record["inputs"]["danger_state"].startswith("a fresh LoRA initialisation")
    assert "shipped danger anchors" in record["inputs"]["danger_direction"]
    assert "shipped safety anchors" in record["inputs"]["safety_direction"]
    cache = base / "cache"
    assert len(list((cache / "states").iterdir())) == 1          # in the given cache
    assert len(list((cache / "directions").iterdir())) == 2
    assert first.count("building the direction of") == 2
    assert "building the direction of" not in second              # read from the cache
    assert not (out / "train").exists()                           # nothing trained


def test_real_path_scores_subsets_and_reports(real_path):
    from sqsd_fast.demo.demo_data import DEMO_RECORDS

    base, first, second, first_rows = real_path
    out = base / "out"
    rows = read_rows(out / "scores.jsonl")
    assert read_rows(out / "demo_data.jsonl") == DEMO_RECORDS
    assert [r["index"] for r in rows] == list(range(len(DEMO_RECORDS)))
    assert all(r["status"] == "ok" for r in rows)
    assert sorted(r["rank"] for r in rows) == list(range(1, len(rows) + 1))
    assert rows == first_rows                              # cached state, directions: same scores
    assert [int(r["rank"]) for r in read_rows(out / "scores.csv")] == [r["rank"] for r in rows]
    meta = json.loads((out / "subsets" / "subsets.json").read_text())
    assert [s["name"] for s in meta["subsets"]] == [f"S{k}" for k in range(1, WINDOWS + 1)]
    assert (out / "subsets" / "subsets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for k in range(1, WINDOWS + 1):
        assert f"S{k}: ranks" in first
    by_rank = sorted(rows, key=lambda r: r["rank"])
    for r in (by_rank[0], by_rank[-1]):                    # the top and the bottom are shown
        line = next(ln for ln in first.splitlines() if ln.strip().startswith(f"#{r['rank']} "))
        assert f"{r['sqsd']:+.4f}" in line and f"[index {r['index']}]" in line
        assert DEMO_RECORDS[r["index"]]["instruction"][:30] in line
    assert "0.37 vs 0.10" in first and "sqsd-fast score --model MODEL" in first   # what v3 found
    assert "FALLING BACK" not in first


def test_a_failed_fetch_falls_back_to_the_toy_and_says_so(monkeypatch, tmp_path):
    from sqsd_fast.demo import real
    from sqsd_fast.models import ModelFetchError

    def offline(cache_dir=None, *, progress=True):
        raise ModelFetchError("could not download SmolLM2-135M-Instruct.Q4_1.gguf (test: offline)")

    def must_not_convert(*args, **kwargs):
        raise AssertionError("resolve_model called after a failed fetch")

    monkeypatch.setattr(real, "fetch_smollm2", offline)
    monkeypatch.setattr(real, "resolve_model", must_not_convert)
    out = tmp_path / "out"
    rc, text = _run_demo(["--out-dir", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0, text
    assert "Could not fetch SmolLM2-135M-Instruct" in text and "test: offline" in text
    assert "FALLING BACK TO THE TOY DEMO" in text
    assert "RANDOM weights" in text and "MEAN NOTHING" in text            # the toy ran
    assert (out / "model" / "config.json").is_file()
    assert all(r["status"] == "ok" for r in read_rows(out / "scores.jsonl"))
