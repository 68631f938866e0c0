"""The allowed values of every user-facing option, and the checks that enforce them.

One home for the names the CLI, the Python API and the scoring engine all accept, so a
metric or a dtype cannot be spelled one way in the parser and another in the engine.
Kernel-layer names (backends, Gram modes) live with the ops and are re-exported here.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

from sqsd_fast.ops.constants import BACKENDS
from sqsd_fast.ops.validation import check_choice

# docs/METHOD.md §1: the paper prefers cosine; "dot" and "projection" are unnormalized.
METRICS = ("cosine", "dot", "projection")
# Model weight dtypes a model loaded from a path can take (torch attribute names).
DTYPE_NAMES = ("float32", "bfloat16", "float16")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
# Names users give directions (--monitor-direction, --more-danger-direction): they become
# CSV/Parquet column names and log keys, so no spaces or separators.
DIRECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

__all__ = ["BACKENDS", "DTYPE_NAMES", "METRICS", "check_choice", "check_device",
           "check_finite_float", "check_positive_int", "name_value_pairs"]


def check_positive_int(name: str, value, *, optional: bool = False):
    """``value`` if it is an int >= 1 (or None when ``optional``), else a ValueError naming ``name``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_finite_float(name: str, value) -> float:
    """``float(value)`` if it is a finite number, else a ValueError naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def check_device(name: str, value) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(value, str) or _DEVICE.fullmatch(value) is None:
        raise ValueError(f"{name} must be cpu, cuda or cuda:N, got {value!r}")
    return value


def name_value_pairs(name, value, form: str) -> list[tuple[str, str]]:
    """``NAME=VALUE`` items (a list from the CLI; one string or a mapping from Python)."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        value = [f"{k}={v}" for k, v in value.items()]
    elif isinstance(value, str):
        value = [value]
    pairs, seen = [], set()
    for item in value:
        key, sep, rest = str(item).partition("=")
        key, rest = key.strip(), rest.strip()
        if not sep or not rest or DIRECTION_NAME.fullmatch(key) is None:
            raise ValueError(f"{name} {item!r}: expected {form}, the name made of letters, "
                             f"digits, '_', '.' or '-'")
        if key in seen:
            raise ValueError(f"{name}: the name {key!r} is given twice")
        seen.add(key)
        pairs.append((key, rest))
    return pairs


def parse_drop_top(value) -> float | int:
    """``FRACTION`` (0 < F < 1) or ``N`` (a whole number >= 0) of ``filter --drop-top``."""
    text = str(value).strip()
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is not None and n >= 0:
        return n
    try:
        fraction = float(text)
    except ValueError:
        fraction = math.nan
    if 0 < fraction < 1:
        return fraction
    raise ValueError(f"drop_top must be a fraction in (0, 1) or a whole number of samples, got {value!r}")
