"""sqsd_fast shortens libgomp's spin-waits when it is imported before torch (sqsd_fast/_openmp.py),
and leaves a user's own OpenMP wait settings, or an already loaded torch, alone. libgomp's
OMP_DISPLAY_ENV=VERBOSE prints the spin count it actually runs with."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**clean, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def libgomp_spin_count(code: str, **env) -> str:
    proc = run(code, OMP_DISPLAY_ENV="VERBOSE", **env)
    lines = [line for line in proc.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    if not lines:
        pytest.skip("torch's OpenMP runtime is not libgomp here (nothing to shorten)")
    return lines[0].split("=")[1].strip().strip("'")


def test_importing_sqsd_fast_first_shortens_the_spin():
    assert libgomp_spin_count("import sqsd_fast, torch; torch.ones(4096).sum()") == "10000"


def test_torch_loaded_first_is_left_alone():
    assert libgomp_spin_count("import torch, sqsd_fast; torch.ones(4096).sum()") == "300000"


def test_the_users_own_setting_wins():
    assert libgomp_spin_count("import sqsd_fast, torch", GOMP_SPINCOUNT="12345") == "12345"
    run("import os, sqsd_fast; assert 'GOMP_SPINCOUNT' not in os.environ", OMP_WAIT_POLICY="ACTIVE")
