"""Short OpenMP spin-waits, set before torch loads its OpenMP runtime.

torch's CPU builds run their thread pools on GNU OpenMP (libgomp). Between parallel regions
its idle threads busy-wait for about 300,000 iterations before they sleep. On cores that
another busy process shares, that spinning burns the time slices the other threads of the
same region need, and a run slows several times over. The many small per-module calls of a
scoring pass suffer most.

A spin count of 10,000 keeps the waits short. On the 2-core development CPU, 16 samples
scored beside another 2-thread job ran 1.5x (floor) to 2x (query scores) faster than with
the default. On a quiet machine it is no slower: 256 samples, back to back, took 6% less
time in all with it (BENCHMARKS.md, "A busy machine: libgomp's spin-waits").

libgomp reads its environment once, when it is loaded, so this only takes effect when
sqsd_fast is imported before torch, as the ``sqsd-fast`` command does. A ``GOMP_SPINCOUNT``
or ``OMP_WAIT_POLICY`` that is already set is left alone; setting either one is how to opt
out (``GOMP_SPINCOUNT=300000`` restores libgomp's default).
"""
from __future__ import annotations

import os
import sys

SPIN_COUNT = "10000"
USER_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def shorten_spin_waits() -> bool:
    """Set ``GOMP_SPINCOUNT`` for this process and its children unless torch is already
    loaded or the user chose a wait policy; whether it was set."""
    if "torch" in sys.modules or any(name in os.environ for name in USER_SETTINGS):
        return False
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True
