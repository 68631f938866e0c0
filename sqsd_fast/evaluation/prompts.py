"""Reading evaluation prompts: one list of non-empty texts in file order.

- ``.txt``: one prompt per line, blank lines skipped, surrounding whitespace stripped. A
  line that starts and ends with a double quote is CSV-quoted and is unquoted the CSV way
  (``""`` inside becomes ``"``): the AdvBench ``harmful_behaviors`` list is stored like
  that, quoting exactly the behaviours that contain a comma. (A prompt that really is
  wrapped in quotes therefore loses them; put it in a JSONL file instead.)
- ``.json`` / ``.jsonl`` / ``.csv`` / ``.parquet`` (read by ``sqsd_fast.data.records``):
  the ``field`` of every record, by default the first of ``prompt``, ``goal``,
  ``instruction`` present in the first record (AdvBench's CSV and JSONL use ``goal``).

Every problem is a ValueError naming the file (as ``--prompts``) and the record.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from sqsd_fast.data.records import FILE_FORMATS, load_raw

DEFAULT_FIELDS = ("prompt", "goal", "instruction")
TEXT_SUFFIXES = (".txt", ".text")


def read_prompts(path: str, *, field: str | None = None, limit: int | None = None
                 ) -> list[str]:
    """The prompts of ``path`` in file order (the first ``limit`` when given)."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "file not found"
        raise ValueError(f"--prompts {path}: {what}")
    if p.suffix.lower() in TEXT_SUFFIXES:
        if field is not None:
            raise ValueError(f"--prompt-field {field}: {path} is a text file with one prompt "
                             f"per line, it has no fields; drop --prompt-field")
        prompts = _read_text(p, path)
    else:
        prompts = _read_table(p, path, field)
    if not prompts:
        raise ValueError(f"--prompts {path}: no prompts (the file is empty or has only blank "
                         f"lines)")
    return prompts if limit is None else prompts[:limit]


def _read_text(p: Path, name: str) -> list[str]:
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"--prompts {name}: not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start})") from None
    prompts = []
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
            text = _unquote(text, name, lineno)
        if text:
            prompts.append(text)
    return prompts


def _unquote(text: str, name: str, lineno: int) -> str:
    try:
        fields = next(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise ValueError(f"--prompts {name}: line {lineno} starts and ends with a quote but "
                         f"is not one CSV-quoted field ({exc}); write inner quotes as \"\"")\
            from None
    if len(fields) != 1:
        # '"a", "b"': quotes around parts of the line, not around the line; keep it as is
        return text
    return fields[0].strip()


def _read_table(p: Path, name: str, field: str | None) -> list[str]:
    if p.suffix.lower() not in FILE_FORMATS:
        allowed = ", ".join(sorted({*TEXT_SUFFIXES, *FILE_FORMATS}))
        raise ValueError(f"--prompts {name}: unknown prompt file extension "
                         f"{p.suffix or '(none)'!r}; use one of {allowed}")
    try:
        rows = load_raw(p).rows
    except ValueError as exc:   # its messages start with the file name
        raise ValueError(f"--prompts {exc}") from None
    key = field if field is not None else _default_field(rows[0], name)
    prompts = []
    for i, row in enumerate(rows):
        if key not in row or row[key] is None:
            present = ", ".join(repr(k) for k in row) or "none"
            raise ValueError(f"--prompts {name}: record {i} has no {key!r} field (fields "
                             f"present: {present}); name the prompt field with "
                             f"--prompt-field")
        value = row[key]
        if not isinstance(value, str):
            raise ValueError(f"--prompts {name}: record {i}: field {key!r} must be text, got "
                             f"{type(value).__name__}")
        if not value.strip():
            raise ValueError(f"--prompts {name}: record {i}: field {key!r} is empty; remove "
                             f"the record or fill in the prompt")
        prompts.append(value.strip())
    return prompts


def _default_field(row: dict, name: str, candidates: Sequence[str] = DEFAULT_FIELDS) -> str:
    for key in candidates:
        if key in row:
            return key
    present = ", ".join(repr(k) for k in row) or "none"
    raise ValueError(f"--prompts {name}: records have none of the fields "
                     f"{', '.join(candidates)} (fields present: {present}); name the prompt "
                     f"field with --prompt-field")
