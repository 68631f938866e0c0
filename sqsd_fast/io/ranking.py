"""Which rows are scored, and their order: highest score first, ties by input index.

The one definition used for the ``rank`` column, the run summary and the subsets, so the
three can never disagree about who is riskiest.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping


def is_scored(row: Mapping, column: str) -> bool:
    """A finite number in ``column`` and a status of "ok" (or no status column at all)."""
    value = row.get(column)
    return (row.get("status") in (None, "ok") and isinstance(value, (int, float))
            and not isinstance(value, bool) and math.isfinite(value))


def sort_scored(rows: Iterable[Mapping], column: str) -> list:
    """The scored rows, highest ``column`` first; equal scores keep input (index) order."""
    return sorted((r for r in rows if is_scored(r, column)),
                  key=lambda r: (-r[column], int(r["index"])))


def add_ranks(rows: list[dict], column: str) -> None:
    """Sets ``rank`` on every row: 1 = highest score among scored rows, None if unscored."""
    for r in rows:
        r["rank"] = None
    for rank, r in enumerate(sort_scored(rows, column), 1):
        r["rank"] = rank
