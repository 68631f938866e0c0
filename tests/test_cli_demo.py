"""`python -m sqsd_fast.demo`: offline, deterministic, honest about being a toy."""
from __future__ import annotations

import pytest

pytest.importorskip("peft")


def test_demo_runs_and_writes_everything(tmp_path, capsys):
    from sqsd_fast.demo.__main__ import main
    from sqsd_fast.demo.demo_data import DEMO_RECORDS
    from sqsd_fast.io.writers import read_rows

    assert 30 <= len(DEMO_RECORDS) <= 60
    out = tmp_path / "demo"
    assert main(["--out-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "RANDOM weights" in text and "MEAN NOTHING" in text
    assert "sqsd-fast score --model" in text and "highest sqsd" in text
    rows = read_rows(out / "scores.jsonl")
    assert len(rows) == len(DEMO_RECORDS) and all(r["status"] == "ok" for r in rows)
    csv_rows = read_rows(out / "scores.csv")
    assert [int(r["rank"]) for r in csv_rows] == [r["rank"] for r in rows]
    for name in ("S1.jsonl", "S5.jsonl", "subsets.png", "subsets.json"):
        assert (out / "subsets" / name).is_file(), name
    assert not list(out.glob("scores.jsonl.*"))         # no resume sidecars left behind
