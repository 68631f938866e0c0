"""Where the benchmarks and the validation experiment keep what they measure.

One constant for every script: the top-level ``results/`` folder, outside the source
folders (benchmarks/, sqsd_fast/). No heavy imports here: scripts that measure their own
peak memory import this before torch.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "results"
