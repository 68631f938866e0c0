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
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "validation.py"), "--smoke", "--v2",
                             "--work-dir", str(work)], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_smoke_run_covers_every_stage_and_reruns_from_cache(tmp_path):
    out = _run(tmp_path)
    results = tmp_path / "results"
    with open(results / "asr.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = {r["label"] for r in rows}
    assert labels == {"S1", "S2", "S3", "random-1-top", "length-top", "self-inf-n-top",
                      "gradmatch-top", "length-matched", "shortest", "gradmatch-windows-S2",
                      "gradmatch-windows-S3"}
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
    # The length controls: the matched window has S1's response lengths, none of its samples.
    matched = json.loads((results / "windows" / "length-matched.json").read_text())
    s1 = json.loads((tmp_path / "windows" / "sqsd" / "subsets.json").read_text())["subsets"][0]
    assert not set(matched["pool_indices"]) & set(s1["indices"])
    assert len(matched["pool_indices"]) == len(s1["indices"])
    assert "d = ASR(S1) − ASR(length-matched)" in report and "not measured yet" not in report.split(
        "## Controls")[1].split("##")[0]
    # v2 (issue #17): every pre-registered window x seed, judged by the content judge on
    # longer answers; SQSD-anchor's direction written by anchor-direction, read by score.
    with open(results / "v2_asr.csv", newline="") as f:
        v2 = list(csv.DictReader(f))
    expected = {(name, w, seed) for name in ("sqsd", "gradmatch-windows", "sqsd-anchor")
                for w in ("S1", "S2", "S3") for seed in ("42", "43")}
    expected |= {("random-1", "S1", seed) for seed in ("42", "43")}
    assert {(r["ranking"], r["window"], r["seed"]) for r in v2} == expected
    for r in v2:
        answers = [json.loads(line) for line in
                   (results / "generations" / "v2" / f"{r['label']}.jsonl").read_text().splitlines()]
        assert len(answers) == 6 and all(a["judge"] == "content" and a["verdict"] for a in answers)
        assert float(r["asr_content"]) == sum(a["verdict"] == "compliance" for a in answers) / 6
    assert (tmp_path / "lora_anchor_danger" / "direction.json").exists()
    assert "## v2: three seeds" in report and "Direction or score" in report
    # A rerun finds everything done.
    again = _run(tmp_path)
    assert ": running" not in again and ": cached" in again


def test_length_matched_takes_the_closest_unused_length_outside_the_target():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from validation import length_matched

    lengths = {0: 10, 1: 50, 2: 11, 3: 9, 4: 49, 5: 100, 6: 12, 7: 48}
    chosen = length_matched(lengths, [0, 1])          # S1 = samples 0 (10 tokens) and 1 (50)
    # 0 -> 2 (11) and 3 (9) tie at distance 1: the lower index; 1 -> 4 (49).
    assert chosen == [2, 4]
    assert length_matched(lengths, [3, 2]) == [0, 6]   # 9 -> 10 (idx 0); 11 -> 12 (idx 6), 0 used


def test_v2_numbers_follow_the_preregistered_rules():
    """The v2 criterion (preregistration_v2.md) on made-up fine-tune ASRs: a clear fall from
    S1 to S5 over three seeds is met, a flat one is not; the direction-or-score rule."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from validation_report import v2_numbers

    def rows(ranking, per_window):
        return [{"ranking": ranking, "window": f"S{k}", "asr_content": a}
                for k, seeds in enumerate(per_window, start=1) for a in seeds]

    falling = [(0.60, 0.62, 0.58), (0.50, 0.52, 0.47), (0.40, 0.41, 0.44), (0.30, 0.33, 0.29), (0.20, 0.18, 0.22)]
    flat = [(0.40, 0.30, 0.50), (0.42, 0.38, 0.40), (0.41, 0.39, 0.40), (0.40, 0.44, 0.36), (0.38, 0.45, 0.40)]
    numbers = v2_numbers(rows("gradmatch-windows", falling) + rows("sqsd", flat)
                         + rows("sqsd-anchor", falling), 5)
    gm, sq = numbers["gradmatch-windows"], numbers["sqsd"]
    assert gm["verdict"] == "met" and gm["p"] < 0.001 and abs(gm["spearman"] + 1.0) < 1e-9
    assert abs(gm["gap"] - 0.4) < 1e-9 and gm["sds"][0] > 0
    assert sq["verdict"] == "NOT met" and sq["p"] > 0.05
    assert numbers["direction_or_score"] == "the direction"   # the anchors' direction closes the gap
    numbers = v2_numbers(rows("gradmatch-windows", falling) + rows("sqsd", flat)
                         + rows("sqsd-anchor", flat), 5)
    assert numbers["direction_or_score"] == "the score"
    assert v2_numbers(rows("sqsd", falling[:1]), 5)["sqsd"]["verdict"] == "incomplete"
