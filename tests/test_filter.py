"""`sqsd-fast filter` / `sqsd_fast.app.filtering.filter_data`: the data without its riskiest
samples, or with 0/1 weights, on a real score file (the stand-in scorer writes it, with its
run record, as `score` does)."""
from __future__ import annotations

import json

import pytest

import sqsd_fast.app.cli as cli
import sqsd_fast.app.pipeline as pipeline
from sqsd_fast.app.filtering import filter_data
from sqsd_fast.io.writers import read_rows
from sqsd_fast.testing.fake_scorer import RECORDS, FakeScorer, make_workspace, score_args


@pytest.fixture
def scored(tmp_path, monkeypatch):
    ws = make_workspace(tmp_path)
    monkeypatch.setattr(pipeline, "load_scorer", lambda options: FakeScorer())
    out = tmp_path / "scores.csv"            # CSV: scores come back as text
    assert cli.main(score_args(ws, out, "--quiet")) == 0
    rows = read_rows(out)
    order = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: (-float(r["sqsd"]), int(r["index"])))
    return ws, out, [int(r["index"]) for r in order], {int(r["index"]): float(r["sqsd"]) for r in order}


def test_drop_top_fraction_keeps_the_rest_in_order_and_in_the_input_format(scored, tmp_path, capsys):
    ws, scores, ranked, by_index = scored
    out = tmp_path / "kept.jsonl"
    assert cli.main(["filter", "--scores", str(scores), "--data", str(ws["data"]), "--drop-top", "0.25",
                     "--out", str(out)]) == 0
    n_scored = len(ranked)                                   # one record has no response token
    k = int(0.25 * n_scored + 0.5)
    dropped = set(ranked[:k])
    assert read_rows(out) == [r for i, r in enumerate(RECORDS) if i not in dropped]
    summary = json.loads((tmp_path / "kept.jsonl.filter.json").read_text())
    assert [d["index"] for d in summary["dropped"]] == ranked[:k]
    assert summary["n_kept"] == len(RECORDS) - k and summary["data_checked"] is True
    assert min(by_index[i] for i in dropped) >= max(by_index[i] for i in ranked[k:])
    text = capsys.readouterr().out
    assert f"{len(RECORDS) - k} of {len(RECORDS)} records kept" in text and "unscored records kept: 1" in text


def test_drop_top_n_max_score_and_weights(scored, tmp_path):
    ws, scores, ranked, by_index = scored
    result = filter_data(scores, ws["data"], tmp_path / "top3.csv", drop_top="3")
    assert [d["index"] for d in result.dropped] == ranked[:3] and result.n_kept == len(RECORDS) - 3
    assert len(read_rows(tmp_path / "top3.csv")) == len(RECORDS) - 3
    cut = by_index[ranked[4]]                                # drops exactly the four above it
    result = filter_data(scores, ws["data"], tmp_path / "max.jsonl", max_score=cut)
    assert [d["index"] for d in result.dropped] == ranked[:4]
    weighted = filter_data(scores, ws["data"], tmp_path / "w.parquet", drop_top=2, weight_column="weight")
    rows = read_rows(tmp_path / "w.parquet")
    assert len(rows) == len(RECORDS) and weighted.n_dropped == 2
    assert [i for i, r in enumerate(rows) if r["weight"] == 0.0] == sorted(ranked[:2])
    assert all(r["weight"] == 1.0 for i, r in enumerate(rows) if i not in ranked[:2])
    assert {k: v for k, v in rows[0].items() if k != "weight"} == RECORDS[0]


def test_bad_input_is_one_line_naming_the_option(scored, tmp_path, capsys):
    ws, scores, ranked, _ = scored
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**r, "response": r["response"] + "!"}) + "\n" for r in RECORDS))
    base = ["filter", "--scores", str(scores)]
    cases = [
        ([*base, "--data", str(other), "--drop-top", "2", "--out", str(tmp_path / "a.jsonl")], 1,
         "is not the data that was scored"),
        ([*base, "--data", str(ws["data"]), "--drop-top", "1.5", "--out", str(tmp_path / "a.jsonl")], 2,
         "--drop-top must be a fraction in (0, 1) or a whole number"),
        ([*base, "--data", str(ws["data"]), "--drop-top", "2", "--max-score", "0", "--out", str(tmp_path / "a.jsonl")],
         2, "give --drop-top or --max-score, exactly one"),
        ([*base, "--data", str(ws["data"]), "--drop-top", "999", "--out", str(tmp_path / "a.jsonl")], 1,
         f"drop_top 999 is more than the {len(ranked)} scored samples"),
        ([*base, "--data", str(ws["data"]), "--drop-top", "2", "--out", str(tmp_path / "a.txt")], 1,
         "the extension names the format"),
        ([*base, "--data", str(ws["data"]), "--drop-top", "2", "--weight-column", "response",
          "--out", str(tmp_path / "a.jsonl")], 1, "--data already has a field of that name"),
        ([*base, "--data", str(ws["data"]), "--drop-top", "2", "--out", str(ws["data"])], 1, "is --data"),
    ]
    for argv, code, message in cases:
        assert cli.main(argv) == code, argv
        err = capsys.readouterr().err
        assert message in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "a.jsonl").exists()
