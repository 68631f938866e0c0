"""`sqsd-fast subsets`: windows over the descending scores, data files and the plot."""
from __future__ import annotations

import json
import math

import pytest

import sqsd_fast.app.cli as cli
from sqsd_fast.io.writers import DATA_FORMATS, SCORE_COLUMNS, read_rows, write_rows
from sqsd_fast.app.subsets import select_subsets, window_starts

N = 23


def _data_rows():
    return [{"instruction": f"Question {i}?", "context": "", "response": f"Answer {i}."}
            for i in range(N)]


def _score_rows():
    rows = []
    for i in range(N):
        value = math.sin(3.1 * i)                      # scrambled order
        ok = i not in (4, 17)
        rows.append({"index": i, "danger_proj": value, "safety_proj": 0.0,
                     "sqsd": value if ok else None, "rank": None, "n_tokens": 10,
                     "n_response_tokens": 3 if ok else 0,
                     "status": "ok" if ok else "no_response_tokens"})
    return rows


def test_window_starts_follow_linspace():
    assert window_starts(100, 5, 10) == [0, 22, 45, 67, 90]
    assert window_starts(387, 5, 77) == [0, 77, 155, 232, 310]       # floor(77.5) = 77
    assert window_starts(10, 1, 4) == [0]
    assert window_starts(10, 5, 6) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="need at least 14 scored samples to be distinct"):
        window_starts(10, 5, 10)        # would repeat the same window five times
    with pytest.raises(ValueError, match="--num 12 windows"):
        window_starts(10, 12, 1)
    with pytest.raises(ValueError, match="--num"):
        window_starts(10, 0, 1)


def test_select_subsets_sorts_descending_and_skips_unscored():
    order, subsets = select_subsets(_score_rows(), num=5, window=4)
    assert len(order) == N - 2 and 4 not in dict(order) and 17 not in dict(order)
    scores = [s for _, s in order]
    assert scores == sorted(scores, reverse=True)
    assert [s.name for s in subsets] == ["S1", "S2", "S3", "S4", "S5"]
    assert subsets[0].indices == [i for i, _ in order[:4]]
    assert subsets[-1].indices == [i for i, _ in order[-4:]]
    assert subsets[0].mean_score > subsets[-1].mean_score
    _, default = select_subsets(_score_rows(), num=5)
    assert all(s.stop - s.start == (N - 2) // 5 for s in default)


@pytest.mark.parametrize("data_ext", sorted(DATA_FORMATS))
@pytest.mark.parametrize("scores_ext", [".jsonl", ".csv", ".parquet"])
def test_subsets_command(tmp_path, capsys, data_ext, scores_ext):
    data = tmp_path / f"data{data_ext}"
    write_rows(data, _data_rows(), formats=DATA_FORMATS)
    scores = tmp_path / f"scores{scores_ext}"
    write_rows(scores, _score_rows(), SCORE_COLUMNS)
    out_dir = tmp_path / "out" / "subsets"
    rc = cli.main(["subsets", "--scores", str(scores), "--data", str(data),
                   "--out-dir", str(out_dir), "--num", "3", "--window", "5"])
    assert rc == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted([f"S1{data_ext}", f"S2{data_ext}", f"S3{data_ext}", "subsets.json",
                            "subsets.png"])
    assert (out_dir / "subsets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out_dir / "subsets.json").read_text())
    order, subsets = select_subsets(_score_rows(), num=3, window=5)
    for sub, entry in zip(subsets, summary["subsets"]):
        assert entry["indices"] == sub.indices and entry["start"] == sub.start
        rows = read_rows(out_dir / entry["file"])
        assert [r["instruction"] for r in rows] == [f"Question {i}?" for i in sub.indices]
        assert list(rows[0]) == ["instruction", "context", "response"]
    text = capsys.readouterr().out
    assert "S1: ranks 1-5" in text and "S3: ranks 17-21" in text


def test_subsets_from_project_output_use_proj(tmp_path):
    data = tmp_path / "data.jsonl"
    write_rows(data, _data_rows())
    scores = tmp_path / "proj.jsonl"
    write_rows(scores, [{"index": i, "proj": float(i), "status": "ok"} for i in range(N)])
    assert cli.main(["subsets", "--scores", str(scores), "--data", str(data),
                     "--out-dir", str(tmp_path / "o"), "--num", "2", "--window", "3"]) == 0
    top = read_rows(tmp_path / "o" / "S1.jsonl")
    assert [r["instruction"] for r in top] == [f"Question {i}?" for i in (22, 21, 20)]
