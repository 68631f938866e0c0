"""Act on the scores: drop the riskiest samples of a data file, or weight them out.

    from sqsd_fast.app.filtering import filter_data
    result = filter_data("scores.jsonl", "train.jsonl", "kept.jsonl", drop_top=0.1)

The rule picks the samples to drop among the *scored* ones (status "ok", a finite score):
``drop_top`` a fraction (0 < F < 1: round(F x scored) samples) or a number (N >= 1) of the
highest scores, ties broken by input order as in the ranking; ``max_score`` every sample
scoring above X. Samples without a score (no response token, a zero update) are kept:
nothing says they are risky, and the summary counts them. The kept records are written in
order, as they were read, in the format ``out``'s extension names; with ``weight_column``
every record is written, with a weight of 1.0 (kept) or 0.0 (dropped) that
``train-adapter --weight-column`` honours. ``OUT.filter.json`` beside records the rule, the
inputs and every dropped index with its score. The data must be the file that was scored
(checked against the scores' run record, as ``subsets`` does).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqsd_fast.app.subsets import (
    check_indices_in_data,
    check_scored_data,
    read_score_rows,
    scored_order,
    unchecked_note,
)
from sqsd_fast.choices import parse_drop_top
from sqsd_fast.data.records import load_raw
from sqsd_fast.io.atomic import atomic_write_text
from sqsd_fast.io.writers import DATA_FORMATS, write_rows


@dataclass
class FilterResult:
    out: Path
    column: str
    rule: str                         # the rule in words, e.g. "the top 10% (54 samples)"
    n_records: int
    n_scored: int
    dropped: list[dict] = field(default_factory=list)   # {"index", "score"}, riskiest first
    threshold: float | None = None    # the lowest score dropped (None: nothing dropped)
    weight_column: str | None = None
    data_checked: bool = False        # the scores' run record confirmed the data file
    scores: str | None = None         # the score file the ranking came from

    @property
    def n_dropped(self) -> int:
        return len(self.dropped)

    @property
    def n_kept(self) -> int:
        return self.n_records - self.n_dropped

    @property
    def summary_path(self) -> Path:
        return summary_path(self.out)


def summary_path(out) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".filter.json")


def select_dropped(order: list[tuple[int, float]], *, drop_top=None,
                   max_score=None) -> tuple[list[tuple[int, float]], str]:
    """The (index, score) pairs to drop from the descending ``order``, and the rule in words."""
    if (drop_top is None) == (max_score is None):
        raise ValueError("give drop_top or max_score, exactly one")
    if max_score is not None:
        if not math.isfinite(max_score):
            raise ValueError(f"max_score must be a finite number, got {max_score!r}")
        dropped = [(i, s) for i, s in order if s > max_score]
        return dropped, f"every score above {max_score:g} ({len(dropped)} samples)"
    top = parse_drop_top(drop_top)
    if isinstance(top, float):
        k = int(math.floor(top * len(order) + 0.5))
        return order[:k], f"the top {top:.4g} of {len(order)} scored samples ({k} samples)"
    if top > len(order):
        raise ValueError(f"drop_top {top} is more than the {len(order)} scored samples")
    return order[:top], f"the top {top} of {len(order)} scored samples"


def filter_data(scores, data, out, *, drop_top=None, max_score: float | None = None,
                weight_column: str | None = None, column: str | None = None,
                data_split: str | None = None) -> FilterResult:
    """Write ``data`` without its riskiest samples (or with 0/1 weights) to ``out``."""

    out = Path(out)
    if out.suffix.lower() not in DATA_FORMATS:
        raise ValueError(f"--out {out}: the extension names the format; use one of "
                         f"{', '.join(sorted(DATA_FORMATS))}")
    if out.exists() and out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file")
    if os.path.abspath(out) == os.path.abspath(data):
        raise ValueError(f"--out {out} is --data; write the kept samples to a new file")
    score_rows, column = read_score_rows(scores, column)
    order = scored_order(score_rows, column)
    if not order:
        raise ValueError(f"--scores {scores}: no scored rows (status 'ok' with a finite {column!r})")
    dropped, rule = select_dropped(order, drop_top=drop_top, max_score=max_score)
    raw = load_raw(data, split=data_split)
    checked = check_scored_data(scores, data, raw, data_split)
    check_indices_in_data(score_rows, raw, data)
    if weight_column is not None and any(weight_column in row for row in raw.rows[:1]):
        raise ValueError(f"--weight-column {weight_column}: --data already has a field of that name; "
                         "choose another name")
    gone = {i for i, _ in dropped}
    if weight_column is None:
        rows = [row for i, row in enumerate(raw.rows) if i not in gone]
    else:
        rows = [{**row, weight_column: 0.0 if i in gone else 1.0} for i, row in enumerate(raw.rows)]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(out, rows, formats=DATA_FORMATS)
    result = FilterResult(out, column, rule, len(raw.rows), len(order),
                          [{"index": i, "score": s} for i, s in dropped],
                          dropped[-1][1] if dropped else None, weight_column, checked, str(scores))
    record = {"data": str(data), **{k: v for k, v in asdict(result).items() if k != "out"},
              "out": str(out), "n_kept": result.n_kept, "n_dropped": result.n_dropped}
    atomic_write_text(summary_path(out), json.dumps(record, indent=1) + "\n")
    return result


def run_filter(options) -> FilterResult:
    """``sqsd-fast filter``: :func:`filter_data` with a ``FilterOptions``' values."""
    return filter_data(options.scores, options.data, options.out, drop_top=options.drop_top,
                       max_score=options.max_score, weight_column=options.weight_column,
                       column=options.column, data_split=options.data_split)


def format_summary(result: FilterResult) -> str:
    """What :func:`filter_data` dropped, in a few lines."""
    kept = (f"{result.n_records} records with {result.weight_column} = 0 for the dropped"
            if result.weight_column else f"{result.n_kept} of {result.n_records} records kept")
    lines = [f"sqsd-fast filter: dropped {result.rule} by {result.column} -> {result.out} ({kept})"]
    if result.dropped:
        lines.append(f"  dropped scores from {result.dropped[0]['score']:+.4f} down to {result.threshold:+.4f}; "
                     f"indices: {', '.join(str(d['index']) for d in result.dropped[:10])}"
                     + (" ..." if result.n_dropped > 10 else ""))
    lines.append(f"  unscored records kept: {result.n_records - result.n_scored}; every dropped index and "
                 f"score: {result.summary_path}")
    if not result.data_checked:
        lines.append(unchecked_note(result.scores))
    return "\n".join(lines)
