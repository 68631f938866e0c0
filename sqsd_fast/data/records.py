"""Reading fine-tuning data into normalized records.

Sources: JSON (a list of objects, or an object of equal-length columns), JSONL, CSV,
Parquet, a `datasets` dataset saved with `save_to_disk`, a hub dataset name (needs
network), or an in-memory list of dicts / `datasets.Dataset`.

Each row takes one of three forms, detected per row:
- instruction: `instruction`, optional `context` (or `input`), `response` (or `output`);
- chat: `messages`, a list of {"role", "content"}; the LAST assistant turn is the
  response and the turns before it are the prompt (turns after it are ignored);
- pre-tokenized: `input_ids` and `labels`, used as they are (docs/METHOD.md §2).

Every problem is reported as a ValueError that names the source, the record index and
the field, and says what would be right.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

# File extensions we read, mapped to the format name used across the package.
FILE_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
                ".parquet": "parquet", ".pq": "parquet"}
# Columns that hold lists; CSV stores them as JSON text, so they are parsed back.
_LIST_COLUMNS_HINT = "a JSON list"
# Extensions that mark a name as a file, never a hub id.
LOCAL_FILE_SUFFIXES = frozenset(FILE_FORMATS) | {".txt", ".tsv", ".gguf", ".bin", ".safetensors",
                                                 ".pt", ".zip", ".gz"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@dataclass(frozen=True)
class FieldNames:
    """Which columns hold what. `context` and `response` list candidates tried in order."""
    instruction: str = "instruction"
    context: tuple[str, ...] = ("context", "input")
    response: tuple[str, ...] = ("response", "output")
    messages: str = "messages"
    input_ids: str = "input_ids"
    labels: str = "labels"


@dataclass(frozen=True)
class Record:
    """One normalized sample.

    kind "instruction" or "chat": `prompt_messages` (the chat turns before the response)
    and `response` are set. kind "pretokenized": `input_ids` and `labels` are set.
    """
    index: int
    kind: str
    prompt_messages: tuple[dict, ...] = ()
    response: str = ""
    input_ids: tuple[int, ...] = ()
    labels: tuple[int, ...] = ()

    def snippet(self, width: int = 70) -> str:
        """A one-line preview of the prompt, for summaries."""
        if self.kind == "pretokenized":
            return f"<pre-tokenized, {len(self.input_ids)} tokens>"
        users = [m["content"] for m in self.prompt_messages if m.get("role") == "user"]
        text = users[-1] if users else (self.prompt_messages[-1]["content"]
                                        if self.prompt_messages else "")
        text = " ".join(str(text).split())
        return text if len(text) <= width else text[: width - 3] + "..."


@dataclass
class RawData:
    """Rows as read, before normalization. `fmt` is one of json, jsonl, csv, parquet,
    dataset (a saved `datasets` directory), hub, memory."""
    rows: list[dict]
    fmt: str
    name: str
    path: Path | None = None
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- reading

def load_raw(source: Any, *, split: str | None = None) -> RawData:
    """Read `source` (path, hub name, list of dicts or `datasets.Dataset`) into rows."""
    if isinstance(source, (list, tuple)):
        rows = list(source)
        _check_rows_are_dicts(rows, "in-memory data")
        return _nonempty(RawData(rows, "memory", "in-memory data"))
    if _is_datasets_object(source):
        return _nonempty(_from_datasets_object(source, "in-memory dataset", split, "memory"))
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"data must be a file path, a dataset name, a list of dicts or a "
                         f"datasets.Dataset, not {type(source).__name__}")
    path = Path(source).expanduser()
    name = str(source)
    if path.is_dir():
        return _nonempty(_read_dataset_dir(path, name, split))
    if path.exists():
        fmt = FILE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"{name}: unknown data file extension {path.suffix!r}; use one "
                             f"of {', '.join(sorted(FILE_FORMATS))}, or a saved datasets "
                             f"directory")
        reader = {"json": _read_json, "jsonl": _read_jsonl, "csv": _read_csv,
                  "parquet": _read_parquet}[fmt]
        try:
            rows = reader(path, name)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") \
                from None
        return _nonempty(RawData(rows, fmt, name, path))
    if looks_like_local_path(name):
        raise ValueError(f"{name}: data file not found")
    return _nonempty(_read_hub(name, split))


def read_records(source: Any, fields: FieldNames = FieldNames(), *,
                 split: str | None = None, limit: int | None = None) -> list[Record]:
    """Read and normalize `source`; `limit` keeps only the first `limit` rows."""
    raw = load_raw(source, split=split)
    rows = raw.rows if limit is None else raw.rows[:limit]
    return normalize_rows(rows, fields, raw.name)


def _nonempty(raw: RawData) -> RawData:
    if not raw.rows:
        raise ValueError(f"{raw.name}: the dataset is empty (no records)")
    return raw


def looks_like_local_path(name: str | os.PathLike) -> bool:
    """True when ``name`` must be a local path rather than a hub id ("name" or "owner/name").

    The one rule for models, adapters and data: an existing path, a name starting like a
    path (".", "/", "~"), one that no hub id can spell (e.g. "a/b/c"), or one ending in a
    file extension this package reads or writes (".jsonl", ".gguf", ...) is local. So
    "meta-llama/Llama-3.1-8B" is a hub id and "missing.jsonl" a missing file.
    """
    name = os.fspath(name)
    if os.path.exists(os.path.expanduser(name)) or name.startswith((".", "/", "~")):
        return True
    if _HUB_ID.fullmatch(name) is None:
        return True
    return Path(name).suffix.lower() in LOCAL_FILE_SUFFIXES


def _check_rows_are_dicts(rows: Sequence, name: str) -> None:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{name}: record {i} is a {type(row).__name__}, expected an "
                             f"object with named fields")


def _read_json(path: Path, name: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg})") from None
    if isinstance(data, list):
        _check_rows_are_dicts(data, name)
        return data
    if isinstance(data, dict):
        columns = {k: v for k, v in data.items()}
        bad = [k for k, v in columns.items() if not isinstance(v, list)]
        if bad:
            raise ValueError(f"{name}: a JSON object must map column names to lists of "
                             f"equal length (column {bad[0]!r} is a "
                             f"{type(columns[bad[0]]).__name__}); or use a list of records")
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{name}: JSON columns have different lengths {lengths}; "
                             f"every column needs one value per record")
        n = next(iter(lengths.values()), 0)
        return [{k: columns[k][i] for k in columns} for i in range(n)]
    raise ValueError(f"{name}: JSON must be a list of records or an object of columns, "
                     f"not a {type(data).__name__}")


def _read_jsonl(path: Path, name: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name}: line {lineno} is not valid JSON ({exc.msg}, "
                                 f"column {exc.colno}); JSONL needs one object per line") \
                    from None
            if not isinstance(row, dict):
                raise ValueError(f"{name}: line {lineno} is a {type(row).__name__}, "
                                 f"expected a JSON object")
            rows.append(row)
    return rows


def _read_csv(path: Path, name: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        try:
            reader = csv.DictReader(f)
            for i, row in enumerate(reader):
                if None in row:
                    raise ValueError(f"{name}: CSV row {i} (line {reader.line_num}) has more "
                                     f"values than the header has columns")
                rows.append({k: ("" if v is None else v) for k, v in row.items()})
        except csv.Error as exc:
            raise ValueError(f"{name}: unreadable CSV ({exc})") from None
    return rows


def _read_parquet(path: Path, name: str) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{name}: not a readable Parquet file ({exc})") from None
    return table.to_pylist()


def _is_datasets_object(obj: Any) -> bool:
    mod = type(obj).__module__ or ""
    return mod.startswith("datasets.") and type(obj).__name__ in ("Dataset", "DatasetDict")


def _from_datasets_object(ds: Any, name: str, split: str | None, fmt: str) -> RawData:
    if type(ds).__name__ == "DatasetDict":
        splits = list(ds.keys())
        if split is None:
            if "train" in ds:
                split = "train"
            elif len(splits) == 1:
                split = splits[0]
            else:
                raise ValueError(f"{name}: the dataset has splits {splits}; choose one "
                                 f"(--data-split)")
        if split not in ds:
            raise ValueError(f"{name}: no split {split!r}; available: {splits}")
        ds = ds[split]
    return RawData([dict(r) for r in ds], fmt, name, extra={"split": split})


def _read_dataset_dir(path: Path, name: str, split: str | None) -> RawData:
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / m).exists() for m in markers):
        raise ValueError(f"{name}: is a directory but not a dataset saved with "
                         f"datasets' save_to_disk (none of {', '.join(markers)}); pass a "
                         f"data file instead")
    import datasets
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for a damaged directory
        raise ValueError(f"{name}: could not load the saved dataset ({exc})") from None
    raw = _from_datasets_object(ds, name, split, "dataset")
    raw.path = path
    return raw


def _read_hub(name: str, split: str | None) -> RawData:
    import datasets
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # network, missing dataset, bad split, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{name}: no such data file, and loading it as a hub dataset "
                         f"failed ({first})") from None
    return _from_datasets_object(ds, name, split, "hub")


# ----------------------------------------------------------------------- normalizing

def normalize_rows(rows: Iterable[dict], fields: FieldNames = FieldNames(),
                   name: str = "data") -> list[Record]:
    """Turn raw rows into Records, detecting each row's form."""
    records = [normalize_row(row, i, fields, name) for i, row in enumerate(rows)]
    if not records:
        raise ValueError(f"{name}: the dataset is empty (no records)")
    return records


def normalize_row(row: dict, index: int, fields: FieldNames = FieldNames(),
                  name: str = "data") -> Record:
    where = f"{name}: record {index}"
    if not isinstance(row, dict):
        raise ValueError(f"{where} is a {type(row).__name__}, expected an object")
    if _present(row, fields.input_ids):
        return _pretokenized(row, index, fields, where)
    if _present(row, fields.messages):
        return _chat(row, index, fields, where)
    return _instruction(row, index, fields, where)


def _present(row: dict, key: str) -> bool:
    value = row.get(key)
    return value is not None and not (isinstance(value, str) and value.strip() == "")


def _field_list(row: dict, key: str, where: str) -> list:
    value = row[key]
    if isinstance(value, str):  # CSV and some exports store lists as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: field {key!r} is text that is not "
                             f"{_LIST_COLUMNS_HINT}") from None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: field {key!r} must be a list, got "
                         f"{type(value).__name__}")
    return list(value)


def _int_list(row: dict, key: str, where: str) -> tuple[int, ...]:
    values = _field_list(row, key, where)
    out = []
    for j, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise ValueError(f"{where}: {key}[{j}] = {v!r} is not an integer")
        out.append(v)
    return tuple(out)


def _pretokenized(row: dict, index: int, fields: FieldNames, where: str) -> Record:
    if not _present(row, fields.labels):
        raise ValueError(f"{where}: has {fields.input_ids!r} but no {fields.labels!r}; "
                         f"pre-tokenized records need both (labels -100 on prompt tokens)")
    ids = _int_list(row, fields.input_ids, where)
    labels = _int_list(row, fields.labels, where)
    if len(ids) != len(labels):
        raise ValueError(f"{where}: {fields.input_ids!r} has {len(ids)} tokens but "
                         f"{fields.labels!r} has {len(labels)}; they must be equally long")
    if not ids:
        raise ValueError(f"{where}: {fields.input_ids!r} is empty")
    if any(t < 0 for t in ids):
        raise ValueError(f"{where}: {fields.input_ids!r} holds negative token ids")
    return Record(index, "pretokenized", input_ids=ids, labels=labels)


def _chat(row: dict, index: int, fields: FieldNames, where: str) -> Record:
    key = fields.messages
    messages = _field_list(row, key, where)
    clean = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"{where}: {key}[{j}] must be an object with 'role' and "
                             f"'content'")
        if not isinstance(m["content"], str):
            raise ValueError(f"{where}: {key}[{j}].content must be text, got "
                             f"{type(m['content']).__name__}")
        clean.append({"role": str(m["role"]), "content": m["content"]})
    last = max((j for j, m in enumerate(clean) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError(f"{where}: {key!r} has no assistant turn; the last assistant "
                         f"turn is the response to score")
    if last == 0:
        raise ValueError(f"{where}: {key!r} starts with the assistant turn; a prompt "
                         f"turn (user) must come before the response")
    return Record(index, "chat", prompt_messages=tuple(clean[:last]),
                  response=clean[last]["content"])


def _first_present(row: dict, candidates: tuple[str, ...]) -> str | None:
    for key in candidates:
        if key in row and row[key] is not None:
            return key
    return None


def _text(row: dict, key: str, where: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} must be text, got {type(value).__name__}")
    return value


def _instruction(row: dict, index: int, fields: FieldNames, where: str) -> Record:
    present = ", ".join(repr(k) for k in row) or "none"
    if fields.instruction not in row or row[fields.instruction] is None:
        raise ValueError(f"{where}: no {fields.instruction!r} field (fields present: "
                         f"{present}); records need instruction+response, {fields.messages!r}"
                         f" or {fields.input_ids!r}+{fields.labels!r} (rename with "
                         f"--instruction-field)")
    response_key = _first_present(row, fields.response)
    if response_key is None:
        names = " or ".join(repr(k) for k in fields.response)
        raise ValueError(f"{where}: no response field ({names}; fields present: {present}); "
                         f"name it with --response-field")
    instruction = _text(row, fields.instruction, where)
    response = _text(row, response_key, where)
    context_key = _first_present(row, fields.context)
    context = _text(row, context_key, where) if context_key else ""
    # docs/METHOD.md §2: user = instruction if context is blank else instruction + "\n" + context
    user = instruction if context.strip() == "" else instruction + "\n" + context
    return Record(index, "instruction", prompt_messages=({"role": "user", "content": user},),
                  response=response)
