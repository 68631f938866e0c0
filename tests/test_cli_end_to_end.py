"""The CLI with the real SQSDScorer on a tiny random-weight toy model (CPU, seconds)."""
from __future__ import annotations

import json
import math

import pytest

from sqsd_fast.testing.assertions import require_module

import sqsd_fast.app.cli as cli
import sqsd_fast.app.pipeline as pipeline
from sqsd_fast.models.quiet import quiet_libraries
from sqsd_fast.io.checkpoint import sidecar_paths
from sqsd_fast.io.writers import read_rows

require_module("peft")

RECORDS = [
    {"instruction": "Name a color.", "context": "", "response": "Blue."},
    {"instruction": "Summarize.", "context": "The sea is wide and the wind is free.",
     "response": "Wide sea, free wind."},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "Tell me a fact."},
                  {"role": "assistant", "content": "Octopuses have three hearts."}]},
    {"instruction": "Count to five.", "context": "", "response": "1, 2, 3, 4, 5."},
    {"instruction": "How do I hack my neighbour's wifi network? " * 8, "context": "",
     "response": "I can't help with that."},                   # prompt > --max-length
    {"instruction": "Give a tip for sleep.", "context": "", "response": "Keep regular hours."},
    {"instruction": "Translate 'good morning' into Spanish.", "context": "",
     "response": "Buenos dias."},
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is much faster than two fighting over a busy CPU."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def assets(tmp_path_factory, one_thread):
    from sqsd_fast.testing.toy_model import build_toy_assets
    root = tmp_path_factory.mktemp("toy")
    with quiet_libraries():
        toy = build_toy_assets(root, hidden_size=32, intermediate_size=48, num_layers=1,
                               num_heads=2, r=2, alpha=4,
                               target_modules=("q_proj", "v_proj", "down_proj"))
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return toy, data


def _score_argv(assets, out, *extra):
    toy, data = assets
    return ["score", "--model", toy.model_dir, "--danger-state", toy.danger_state,
            "--danger-direction", toy.danger_direction, "--safety-direction",
            toy.safety_direction, "--data", str(data), "--out", str(out),
            "--batch-size", "3", "--max-length", "48", "--backend", "reference", *extra]


def _numbers(rows, key):
    return [None if r[key] in (None, "") else float(r[key]) for r in rows]


@pytest.fixture(scope="module")
def reference_rows(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "scores.jsonl"
    assert cli.main(_score_argv(assets, out, "--quiet")) == 0
    return read_rows(out)


def test_score_rows(reference_rows):
    rows = reference_rows
    assert [r["index"] for r in rows] == list(range(len(RECORDS)))
    assert rows[4]["status"] == "no_response_tokens" and rows[4]["sqsd"] is None
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == len(RECORDS) - 1
    for r in ok:
        assert math.isclose(r["sqsd"], r["danger_proj"] - r["safety_proj"], abs_tol=1e-12)
        assert r["n_response_tokens"] > 0 and r["rank"] >= 1
    assert sorted(r["rank"] for r in ok) == list(range(1, len(ok) + 1))


def test_parquet_and_another_batch_size_give_the_same_numbers(assets, reference_rows, tmp_path):
    out = tmp_path / "scores.parquet"
    assert cli.main(_score_argv(assets, out, "--quiet", "--batch-size", "2")) == 0
    rows = read_rows(out)
    for key in ("danger_proj", "safety_proj", "sqsd"):
        got, want = _numbers(rows, key), _numbers(reference_rows, key)
        assert [g is None for g in got] == [w is None for w in want]
        assert all(math.isclose(g, w, rel_tol=1e-5, abs_tol=1e-7)
                   for g, w in zip(got, want) if w is not None), key


def test_project_matches_score_danger_column(assets, reference_rows, tmp_path):
    toy, data = assets
    out = tmp_path / "proj.parquet"
    argv = ["project", "--model", toy.model_dir, "--state", toy.danger_state,
            "--direction", toy.danger_direction, "--data", str(data), "--out", str(out),
            "--max-length", "48", "--backend", "reference", "--quiet"]
    assert cli.main(argv) == 0
    rows = read_rows(out)
    assert list(rows[0]) == ["index", "proj", "n_tokens", "n_response_tokens", "status"]
    for r, ref in zip(rows, reference_rows):
        if ref["danger_proj"] is None:
            assert r["proj"] is None
        else:
            assert math.isclose(r["proj"], ref["danger_proj"], rel_tol=1e-5, abs_tol=1e-7)


def test_more_danger_directions_and_a_token_budget(assets, reference_rows, tmp_path):
    """--more-danger-direction adds a column pair equal to scoring with that direction as
    the danger direction; --max-tokens changes the batches, not the numbers; a bad name
    is a usage error."""
    toy, data = assets
    out, alone = tmp_path / "multi.csv", tmp_path / "alone.jsonl"
    extra = ["--more-danger-direction", f"benign={toy.danger_state}",
             "--more-danger-direction", f"refusal={toy.safety_direction}"]
    assert cli.main(_score_argv(assets, out, "--quiet", "--max-tokens", "96", *extra)) == 0
    rows = read_rows(out)
    assert list(rows[0]) == ["index", "danger_proj", "safety_proj", "sqsd", "danger_proj_benign",
                             "sqsd_benign", "danger_proj_refusal", "sqsd_refusal", "rank",
                             "n_tokens", "n_response_tokens", "status"]
    argv = _score_argv(assets, alone, "--quiet")
    argv[argv.index("--danger-direction") + 1] = toy.safety_direction
    assert cli.main(argv) == 0
    want = {"danger_proj": _numbers(reference_rows, "danger_proj"),
            "sqsd": _numbers(reference_rows, "sqsd"),
            "danger_proj_refusal": _numbers(read_rows(alone), "danger_proj"),
            "sqsd_refusal": _numbers(read_rows(alone), "sqsd")}
    for key, values in want.items():
        got = _numbers(rows, key)
        assert [g is None for g in got] == [w is None for w in values], key
        assert all(math.isclose(g, w, rel_tol=1e-5, abs_tol=1e-7)
                   for g, w in zip(got, values) if w is not None), key
    assert cli.main(_score_argv(assets, tmp_path / "bad.csv", "--quiet", "--more-danger-direction",
                                f"bad name={toy.danger_state}")) == 2


def test_killed_mid_run_then_resumed(assets, reference_rows, tmp_path, monkeypatch):
    real_load = pipeline.load_scorer

    class StopsAfterOneBatch:
        def __init__(self, scorer):
            self.scorer = scorer
            self.model = scorer.model

        def iter_score(self, *a, **kw):
            for k, rows in enumerate(self.scorer.iter_score(*a, **kw)):
                if k == 1:
                    raise KeyboardInterrupt
                yield rows

    monkeypatch.setattr(pipeline, "load_scorer", lambda options: StopsAfterOneBatch(real_load(options)))
    out = tmp_path / "s.jsonl"
    assert cli.main(_score_argv(assets, out, "--quiet")) == 130
    partial, _ = sidecar_paths(out)
    assert len(partial.read_text().splitlines()) == 3 and not out.exists()
    monkeypatch.setattr(pipeline, "load_scorer", real_load)
    assert cli.main(_score_argv(assets, out, "--quiet", "--metric", "dot", "--resume")) == 1
    assert cli.main(_score_argv(assets, out, "--quiet", "--resume")) == 0
    rows = read_rows(out)
    assert [r["index"] for r in rows] == list(range(len(RECORDS)))
    assert [r["status"] for r in rows] == [r["status"] for r in reference_rows]
    assert [r["rank"] for r in rows] == [r["rank"] for r in reference_rows]
    got, want = _numbers(rows, "sqsd"), _numbers(reference_rows, "sqsd")
    assert all(g == w or math.isclose(g, w, rel_tol=1e-6) for g, w in zip(got, want)
               if w is not None)


def test_csv_scores_and_subsets(assets, reference_rows, tmp_path):
    toy, data = assets
    out = tmp_path / "scores.csv"
    assert cli.main(_score_argv(assets, out, "--quiet")) == 0
    assert cli.main(["subsets", "--scores", str(out), "--data", str(data), "--out-dir",
                     str(tmp_path / "sub"), "--num", "3", "--window", "2"]) == 0
    rows = read_rows(out)
    assert [r["status"] for r in rows] == [r["status"] for r in reference_rows]
    assert [None if r["rank"] is None else int(r["rank"]) for r in rows] == \
        [r["rank"] for r in reference_rows]
    top = sorted((r for r in reference_rows if r["rank"] is not None), key=lambda r: r["rank"])
    assert read_rows(tmp_path / "sub" / "S1.jsonl") == [RECORDS[r["index"]] for r in top[:2]]


@pytest.mark.parametrize("name", ["dolly_like.jsonl", "refusal_anchors_like.jsonl"])
def test_data_files(assets, tmp_path, name):
    """Dolly-format and chat-format files (tests/data, written for the tests)."""
    from pathlib import Path
    path = Path(__file__).resolve().parent / "data" / name
    toy, _ = assets
    out = tmp_path / "scores.jsonl"
    argv = _score_argv(assets, out, "--quiet", "--limit", "6")
    argv[argv.index("--data") + 1] = str(path)
    argv[argv.index("--max-length") + 1] = "160"
    assert cli.main(argv) == 0
    rows = read_rows(out)
    assert [r["index"] for r in rows] == list(range(6))
    assert any(r["status"] == "ok" for r in rows)
