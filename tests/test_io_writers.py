"""Output tables: formats by extension, atomic writes, missing values."""
from __future__ import annotations

import json
import math

import pytest

from sqsd_fast.io.atomic import atomic_path
from sqsd_fast.io.writers import (DATA_FORMATS, SCORE_COLUMNS, output_format, read_rows,
                                  write_rows)

ROWS = [
    {"index": 0, "danger_proj": 0.5, "safety_proj": 0.25, "sqsd": 0.25, "rank": 1,
     "n_tokens": 12, "n_response_tokens": 4, "status": "ok"},
    {"index": 1, "danger_proj": math.nan, "safety_proj": math.nan, "sqsd": math.nan,
     "rank": None, "n_tokens": 3, "n_response_tokens": 0, "status": "no_response_tokens"},
    {"index": 2, "danger_proj": -1e-7, "safety_proj": 0.1, "sqsd": -0.1000001, "rank": 2,
     "n_tokens": 30, "n_response_tokens": 20, "status": "ok"},
]


def _as_numbers(rows):
    out = []
    for r in rows:
        out.append({k: (None if r[k] in (None, "") else
                        (r[k] if k == "status" else float(r[k]))) for k in SCORE_COLUMNS})
    return out


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_round_trip_every_output_format(tmp_path, ext):
    path = tmp_path / f"scores{ext}"
    write_rows(path, ROWS, SCORE_COLUMNS)
    back = read_rows(path)
    assert list(back[0]) == list(SCORE_COLUMNS)
    want = _as_numbers([{k: (None if isinstance(v, float) and math.isnan(v) else v)
                         for k, v in r.items()} for r in ROWS])
    assert _as_numbers(back) == want                   # exact floats, NaN -> missing
    assert [p.name for p in tmp_path.iterdir()] == [path.name]   # no temp files left


def test_jsonl_is_strict_json(tmp_path):
    write_rows(tmp_path / "s.jsonl", ROWS, SCORE_COLUMNS)
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["sqsd"] is None and "NaN" not in lines[1]


def test_parquet_schema_is_fixed_even_when_all_missing(tmp_path):
    import pyarrow.parquet as pq
    write_rows(tmp_path / "s.parquet", [ROWS[1]], SCORE_COLUMNS)
    schema = pq.read_schema(tmp_path / "s.parquet")
    assert str(schema.field("sqsd").type) == "double" and str(schema.field("rank").type) == "int64"


def test_nested_data_rows_in_every_data_format(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}], "note": "a,\"b\"\nc"}]
    for ext in DATA_FORMATS:
        write_rows(tmp_path / f"d{ext}", rows, formats=DATA_FORMATS)
        back = read_rows(tmp_path / f"d{ext}")
        msgs = back[0]["messages"]
        assert (json.loads(msgs) if isinstance(msgs, str) else msgs) == rows[0]["messages"]
        assert back[0]["note"] == rows[0]["note"]


@pytest.mark.parametrize("name", ["out.txt", "out", "out.json", "out.xlsx"])
def test_unsupported_output_extension(tmp_path, name):
    with pytest.raises(ValueError, match="unsupported output extension"):
        write_rows(tmp_path / name, ROWS, SCORE_COLUMNS)
    assert list(tmp_path.iterdir()) == []
    assert output_format("a.JSONL") == "jsonl"


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "s.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["s.jsonl"]


def test_missing_output_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        write_rows(tmp_path / "nope" / "s.jsonl", ROWS, SCORE_COLUMNS)
