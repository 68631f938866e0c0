"""The validation experiment's script (benchmarks/validation.py) end to end on a toy model.

Runs every stage of the S1..S5 experiment with the project's own commands on a tiny random
model and a few samples of the shared data, so the script cannot rot; the real run is by
hand (docs/VALIDATION.md). Skips when ../shared/data is absent (a user's fresh clone).
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "alpaca_5000.json").exists(),
                                reason=f"the shared data is not at {DATA}")


def _run(work: Path) -> str:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "validation.py"), "--smoke",
                             "--work-dir", str(work)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_smoke_run_covers_every_stage_and_reruns_from_cache(tmp_path):
    out = _run(tmp_path)
    results = tmp_path / "results"
    with open(results / "asr.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = {r["label"] for r in rows}
    assert labels == {"S1", "S2", "S3", "random-1-top", "length-top", "self-inf-n-top",
                      "gradmatch-top"}
    for r in rows:
        assert 0.0 <= float(r["asr"]) <= 1.0 and int(r["n"]) == 6
        generations = results / "generations" / f"ft_{r['label']}.jsonl"
        lines = generations.read_text().splitlines()
        assert len(lines) == 6 and "attack_success" in json.loads(lines[0])
    # The drift monitor ran on the first and the last window, every step.
    for window in ("S1", "S3"):
        with open(results / "drift" / f"{window}.csv", newline="") as f:
            drift = list(csv.DictReader(f))
        assert drift and {"danger_proj", "safety_proj", "danger_cos"} <= set(drift[0])
        assert float(drift[-1]["update_norm"]) > 0
    # The fine-tune recipe was frozen by the calibration before any window's fine-tune.
    recipe = json.loads((results / "recipe.json").read_text())
    stages = [s["stage"] for s in csv.DictReader(open(results / "stages.csv", newline=""))]
    first_window = stages.index("fine-tune + evaluate S1")
    assert any(s.startswith("calibrate") for s in stages[:first_window])
    assert recipe["finetune"]["learning_rate"] > 0
    splits = json.loads((results / "splits.json").read_text())
    alpaca = splits["alpaca"]
    used = [i for block in alpaca.values() for i in block]
    assert len(used) == len(set(used))                          # disjoint Alpaca blocks
    report = (results / "VALIDATION.md").read_text()
    assert "SMOKE RUN" in report and "Pre-registered criterion" in report
    assert "ASR(S1) − ASR(S5)" in report and "random-1-top" in report
    # A rerun finds everything done.
    again = _run(tmp_path)
    assert ": running" not in again and ": cached" in again
