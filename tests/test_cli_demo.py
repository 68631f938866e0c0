"""`python -m sqsd_fast.demo`: offline, deterministic, honest about being a toy.

One demo run (module-scoped, a few seconds); the tests check what it writes and prints.
"""
from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

from sqsd_fast.io.writers import read_rows

pytest.importorskip("peft")

WINDOWS, WINDOW = 5, 6   # the demo cuts S1..S5 of 6 samples each


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Run the demo once; return (out_dir, stdout, data rows, score rows)."""
    from sqsd_fast.demo.__main__ import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["--out-dir", str(out)]) == 0
    return out, buf.getvalue(), read_rows(out / "demo_data.jsonl"), read_rows(out / "scores.jsonl")


def test_writes_its_records_and_a_loadable_toy_setup(demo):
    from sqsd_fast.demo.demo_data import DEMO_RECORDS

    out, _, data, _ = demo
    assert data == DEMO_RECORDS                          # the scored file is the demo's records
    assert (out / "model" / "config.json").is_file() and (out / "model" / "tokenizer.json").is_file()
    for adapter in ("danger_state", "danger_direction", "safety"):
        assert (out / adapter / "adapter_config.json").is_file(), adapter
        assert (out / adapter / "adapter_model.safetensors").stat().st_size > 0, adapter
    assert not list(out.glob("scores.jsonl.*"))         # no resume sidecars left behind


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
        assert main(["--out-dir", str(out)]) == 0
    assert read_rows(out / "scores.jsonl") == rows
