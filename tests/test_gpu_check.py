"""`make gpu-check` (benchmarks/gpu_check.py): says it needs a GPU and exits 0 on a CPU, and its
steps run end to end in the CPU rehearsal (smoke sizes), so the script is ready the first
time a GPU is at hand."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the check runs for real")
def test_without_a_gpu_it_says_so_and_runs_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out-dir", str(tmp_path)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0 and "needs a CUDA GPU" in done.stdout and "nothing run" in done.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_step(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-rehearsal", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(tmp_path / "steps.csv") as handle:
        steps = list(csv.DictReader(handle))
    assert [s["step"] for s in steps] == ["build", "tests", "kernels", "e2e", "budget"]
    assert all(s["status"] == "ok" and s["device"] == "cpu-rehearsal" for s in steps)
    with open(tmp_path / "token_budget.csv") as handle:
        budget = list(csv.DictReader(handle))
    assert [int(r["max_tokens"]) for r in budget] == [256, 512] and all(float(r["estimated_bytes"]) > 0 for r in budget)
    assert (tmp_path / "bench_kernels.csv").exists() and (tmp_path / "bench_e2e.csv").exists()
