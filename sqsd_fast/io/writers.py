"""Writing and reading row tables (JSONL, CSV, Parquet, JSON), chosen by file extension.

Writes are atomic (see atomic.py). Missing and non-finite numbers are written as JSON
null, an empty CSV cell, or a Parquet null.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from sqsd_fast.data.records import load_raw
from sqsd_fast.io.atomic import atomic_path

# Formats for score / projection outputs.
OUTPUT_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
# Formats for data files (subsets are written in the input's format).
DATA_FORMATS = {**OUTPUT_FORMATS, ".json": "json"}

# Column types of score and projection outputs, so that Parquet schemas never depend on
# which values happen to be missing.
SCORE_COLUMNS = {"index": "int", "danger_proj": "float", "safety_proj": "float",
                 "sqsd": "float", "rank": "int", "n_tokens": "int",
                 "n_response_tokens": "int", "status": "str"}
PROJECT_COLUMNS = {"index": "int", "proj": "float", "n_tokens": "int",
                   "n_response_tokens": "int", "status": "str"}


def output_format(path: str | os.PathLike, formats: Mapping[str, str] = OUTPUT_FORMATS) -> str:
    """The format name for `path`'s extension, or a ValueError listing the allowed ones."""
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        raise ValueError(f"{path}: unsupported output extension {suffix or '(none)'!r}; use "
                         f"{', '.join(sorted(formats))}")
    return formats[suffix]


def write_rows(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
               columns: Mapping[str, str] | Sequence[str] | None = None, *,
               formats: Mapping[str, str] = OUTPUT_FORMATS) -> None:
    """Write `rows` to `path` atomically, in the format given by its extension.

    `columns`: column order; a mapping {name: "int"|"float"|"str"} also fixes the types
    (used for Parquet). None: the keys of the first row, then any new keys in order seen.
    """
    fmt = output_format(path, formats)
    names = list(columns) if columns is not None else _column_names(rows)
    types = dict(columns) if isinstance(columns, Mapping) else {}
    clean = [{name: clean_value(row.get(name), types.get(name)) for name in names} for row in rows]
    with atomic_path(path) as tmp:
        if fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for row in clean:
                    f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        elif fmt == "json":
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(clean, f, ensure_ascii=False, allow_nan=False, indent=1)
                f.write("\n")
        elif fmt == "csv":
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(names)
                for row in clean:
                    writer.writerow([_csv_cell(row[name]) for name in names])
        else:
            _write_parquet(tmp, clean, names, types)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Read a table written by write_rows (or any JSON/JSONL/CSV/Parquet table).

    CSV cells come back as text; empty cells as None.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: file not found")
    output_format(p, DATA_FORMATS)
    rows = load_raw(p).rows
    if p.suffix.lower() == ".csv":
        rows = [{k: (None if v == "" else v) for k, v in row.items()} for row in rows]
    return rows


def _column_names(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            names.setdefault(key, None)
    return list(names)


def clean_value(value: Any, kind: str | None = None) -> Any:
    """A plain Python value for a table cell: numpy/torch scalars unwrapped, None for
    missing and non-finite numbers, converted to ``kind`` ("int" | "float" | "str")."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy / torch scalars
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if kind == "int":
        return int(value)
    if kind == "float":
        value = float(value)
        return value if math.isfinite(value) else None
    if kind == "str":
        return str(value)
    return value


def select_columns(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict:
    """``row`` reduced to ``columns`` ({name: kind}) with clean values; "rank" is left out
    (it is computed over all rows when they are written)."""
    return {name: clean_value(row.get(name), kind) for name, kind in columns.items()
            if name != "rank"}


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _write_parquet(tmp: str, rows: list[dict], names: list[str], types: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    arrow_types = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    if types:
        schema = pa.schema([(n, arrow_types[types[n]]) for n in names])
        table = pa.Table.from_pylist(rows, schema=schema)
    else:
        table = pa.Table.from_pylist(rows) if rows else pa.table({n: [] for n in names})
    pq.write_table(table, tmp)
