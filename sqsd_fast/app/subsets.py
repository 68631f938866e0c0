"""The paper's evaluation subsets S1..S5 and a plot of the sorted scores.

Samples are sorted by descending score (S1 = riskiest); `num` windows of `window`
samples start at floor(linspace(0, N - window, num)), where N counts the scored samples
(rows with status "ok" and a finite score). Ties keep input order.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sqsd_fast.data.records import load_raw
from sqsd_fast.io.atomic import atomic_path, atomic_write_text
from sqsd_fast.io.checkpoint import path_fingerprint, read_run_record, run_record_path
from sqsd_fast.io.ranking import sort_scored
from sqsd_fast.io.writers import DATA_FORMATS, read_rows, write_rows


@dataclass
class Subset:
    name: str                 # "S1" .. "S<num>"
    start: int                # position in the descending order (0-based, inclusive)
    stop: int                 # exclusive
    indices: list[int] = field(default_factory=list)   # record indices, riskiest first
    scores: list[float] = field(default_factory=list)

    @property
    def mean_score(self) -> float:
        return float(np.mean(self.scores)) if self.scores else math.nan


def window_starts(n: int, num: int, window: int) -> list[int]:
    """Start positions floor(linspace(0, n - window, num)) of `num` windows."""
    if num < 1:
        raise ValueError(f"--num must be at least 1, got {num}")
    if not 1 <= window <= n:
        raise ValueError(f"--window must be between 1 and the number of scored samples "
                         f"({n}), got {window}")
    if n - window + 1 < num:   # fewer distinct start positions than windows: repeats
        raise ValueError(f"--num {num} windows of {window} samples need at least "
                         f"{num + window - 1} scored samples to be distinct; there are {n} "
                         f"(use a smaller --num or --window)")
    return [int(s) for s in np.floor(np.linspace(0, n - window, num)).astype(np.int64)]


def default_window(n: int, num: int) -> int:
    """Non-overlapping windows that tile the ranking: N // num (at least 1)."""
    return max(1, n // max(1, num))


def scored_order(rows: Sequence[dict], column: str) -> list[tuple[int, float]]:
    """(index, score) of the scored rows, sorted by descending score, then index.

    Scores may be text (a CSV file read back); unparseable ones count as unscored.
    """
    numeric = [{"index": int(row["index"]), "status": row.get("status"),
                column: _to_float(row.get(column))} for row in rows]
    return [(r["index"], r[column]) for r in sort_scored(numeric, column)]


def select_subsets(rows: Sequence[dict], *, num: int = 5, window: int | None = None,
                   column: str = "sqsd") -> tuple[list[tuple[int, float]], list[Subset]]:
    """The sorted (index, score) pairs and the `num` windows over them."""
    order = scored_order(rows, column)
    if not order:
        raise ValueError(f"no scored rows (status 'ok' with a finite {column!r}) to take "
                         f"subsets from")
    w = default_window(len(order), num) if window is None else window
    subsets = []
    for k, start in enumerate(window_starts(len(order), num, w)):
        part = order[start:start + w]
        subsets.append(Subset(f"S{k + 1}", start, start + w, [i for i, _ in part],
                              [s for _, s in part]))
    return order, subsets


def plot_subsets(order: Sequence[tuple[int, float]], subsets: Sequence[Subset],
                 path: str | os.PathLike, *, column: str = "sqsd",
                 title: str | None = None) -> None:
    """Save a PNG of the descending scores with each window shaded and labelled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scores = np.array([s for _, s in order], dtype=float)
    fig = Figure(figsize=(8, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(np.arange(1, len(scores) + 1), scores, color="black", linewidth=1.2,
            label=f"{column} (descending)")
    colors = ["#d62728", "#ff7f0e", "#bcbd22", "#2ca02c", "#1f77b4"]
    for k, sub in enumerate(subsets):
        color = colors[k % len(colors)]
        ax.axvspan(sub.start + 0.5, sub.stop + 0.5, color=color, alpha=0.18)
        ax.text((sub.start + sub.stop + 1) / 2, 1.0, sub.name, color=color,
                ha="center", va="bottom", fontweight="bold",
                transform=ax.get_xaxis_transform())
    ax.axhline(0.0, color="grey", linewidth=0.6, linestyle="--")
    ax.set_xlabel("rank (1 = riskiest)")
    ax.set_ylabel(column)
    ax.set_xlim(0.5, len(scores) + 0.5)
    ax.set_title(title or f"{len(scores)} scored samples, {len(subsets)} windows of "
                 f"{subsets[0].stop - subsets[0].start}", pad=18)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png")


def _to_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def subset_data_extension(data_fmt: str, data_path: Path | None) -> str:
    """Subsets keep the input's file format; datasets and hub data become JSONL."""
    if data_fmt in ("json", "jsonl", "csv", "parquet") and data_path is not None:
        return ".jsonl" if data_fmt == "jsonl" else "." + data_fmt
    return ".jsonl"


def write_subsets(scores: str | os.PathLike, data: str | os.PathLike,
                  out_dir: str | os.PathLike, *, num: int = 5, window: int | None = None,
                  column: str | None = None, data_split: str | None = None) -> dict:
    """Cut the ranking in ``scores`` into windows and write them as data files.

    Writes ``out_dir/S1..S<num>`` (records of ``data``, in its format; datasets and hub
    data become JSONL), ``subsets.png`` and ``subsets.json``; returns what subsets.json
    holds. ``column`` defaults to sqsd (or proj for 'project' output).
    """

    score_rows, column = read_score_rows(scores, column)
    order, subsets = select_subsets(score_rows, num=num, window=window, column=column)
    raw = load_raw(data, split=data_split)
    data_checked = check_scored_data(scores, data, raw, data_split)
    check_indices_in_data(score_rows, raw, data)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out-dir {out_dir} is a file; give a directory")
    out.mkdir(parents=True, exist_ok=True)

    ext = subset_data_extension(raw.fmt, raw.path)
    summary = {"scores": str(scores), "data": str(data), "out_dir": str(out_dir), "data_checked": data_checked,
               "column": column, "n_scored": len(order),
               "window": subsets[0].stop - subsets[0].start, "subsets": []}
    for sub in subsets:
        path = out / f"{sub.name}{ext}"
        write_rows(path, [raw.rows[i] for i in sub.indices], formats=DATA_FORMATS)
        summary["subsets"].append({"name": sub.name, "file": path.name, "start": sub.start,
                                   "stop": sub.stop, "mean_score": sub.mean_score,
                                   "indices": sub.indices})
    plot_subsets(order, subsets, out / "subsets.png", column=column)
    atomic_write_text(out / "subsets.json", json.dumps(summary, indent=1) + "\n")
    return summary


def run_subsets(options) -> dict:
    """``sqsd-fast subsets``: :func:`write_subsets` with a ``SubsetsOptions``' values."""
    return write_subsets(options.scores, options.data, options.out_dir, num=options.num,
                         window=options.window, column=options.column, data_split=options.data_split)


def format_summary(summary: dict) -> str:
    """What :func:`write_subsets` wrote, in a few lines."""
    column = summary["column"]
    lines = [f"sqsd-fast subsets: {summary['n_scored']} scored samples, {len(summary['subsets'])} "
             f"windows of {summary['window']} -> {summary['out_dir']}/"]
    lines += [f"  {s['name']}: ranks {s['start'] + 1}-{s['stop']}  mean {column} "
              f"{s['mean_score']:+.4f}  -> {s['file']}" for s in summary["subsets"]]
    lines.append(f"  plot: {os.path.join(summary['out_dir'], 'subsets.png')}")
    if not summary["data_checked"]:
        lines.append(unchecked_note(summary["scores"]))
    return "\n".join(lines)


def unchecked_note(scores) -> str:
    return (f"  note: {scores} has no run record (.meta.json beside it), so it could not "
            f"be checked that --data is the file that was scored")


def read_score_rows(scores, column: str | None = None) -> tuple[list[dict], str]:
    """The rows of a score, project or baseline output (``index`` as int) and the score
    column: ``column``, else sqsd, proj or score, whichever the file has."""
    score_rows = read_rows(scores)
    if not score_rows:
        raise ValueError(f"--scores {scores}: no rows")
    present = set(score_rows[0])
    column = column or next((c for c in ("sqsd", "proj", "score") if c in present), "sqsd")
    for needed in ("index", column):
        if needed not in present:
            raise ValueError(f"--scores {scores}: no {needed!r} column (columns: "
                             f"{', '.join(sorted(present))}); is it 'sqsd-fast score' output?")
    try:
        for r in score_rows:
            r["index"] = int(r["index"])
    except (TypeError, ValueError):
        raise ValueError(f"--scores {scores}: the 'index' column must hold integers") \
            from None
    return score_rows, column


def check_indices_in_data(score_rows: Sequence[dict], raw, data) -> None:
    """Every scored index must be a record of ``data``."""
    top = max(int(r["index"]) for r in score_rows)
    if top >= len(raw.rows):
        raise ValueError(f"--scores refers to record {top} but --data {data} has only "
                         f"{len(raw.rows)} records; pass the data file that was scored")


def check_scored_data(scores, data, raw, data_split) -> bool:
    """Refuse a ``data`` file that is not the one ``scores`` was computed from.

    The pipeline writes ``SCORES.meta.json`` with the data file's content digest; without
    it (scores from elsewhere) nothing can be checked and False is returned.
    """

    record = read_run_record(scores)
    if record is None:
        return False
    fp = record.get("fingerprint", {})
    scored = fp.get("data") or {}
    name = run_record_path(scores).name
    if scored.get("digest") and raw.path is not None:
        if path_fingerprint(data, limit=None)["digest"] != scored["digest"]:
            raise ValueError(f"--data {data} is not the data that was scored: {name} records "
                             f"{scored.get('path')} with other contents; pass the data file that "
                             f"was scored")
    elif scored.get("path") and scored.get("digest") is None and str(data) != scored["path"]:
        raise ValueError(f"--data {data} is not the data that was scored ({name} records "
                         f"{scored['path']})")
    if fp.get("data_split") != data_split:
        raise ValueError(f"--data-split {data_split} differs from the split that was scored "
                         f"({fp.get('data_split')}, per {name})")
    return True
