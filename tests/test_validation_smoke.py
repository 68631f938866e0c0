"""The validation experiment (the benchmarks/validation/ package) end to end on a toy model.

Runs every stage of the S1..S5 experiment with the project's own commands on a tiny random
model and a few samples of the shared data, so the script cannot rot; the real run is by
hand (docs/VALIDATION.md). Its rounds run as ``python -m benchmarks.validation ROUND``
from the repository root. Skips when ../shared/data is absent (a user's fresh clone).
"""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "alpaca_5000.json").exists(),
                                reason=f"the shared data is not at {DATA}")


def _round(name: str, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    """``python -m benchmarks.validation NAME ARGS`` from the repository root, as documented."""
    return subprocess.run([sys.executable, "-m", "benchmarks.validation", name, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _run(work: Path, *extra: str) -> str:
    result = _round("v1", "--smoke", "--v2", "--work-dir", str(work), *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_smoke_run_covers_every_stage_and_reruns_from_cache(tmp_path):
    _run(tmp_path)
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
    # Seed 42 is v1's fine-tune: its longer answers extend v1's, every one.
    compared = [line for line in report.splitlines() if line.startswith("- Reproduction, fine-tunes")]
    assert compared and "8-token answers should extend v1's 6-token ones: 42 of 42 answers do, over 7 " \
        "fine-tunes" in compared[0], compared
    assert "PARTIAL" not in report
    # A rerun finds everything done.
    again = _run(tmp_path)
    assert ": running" not in again and ": cached" in again
    # A new work directory beside the kept results (a later session without the cache):
    # the aligned model is merged from the kept adapter, its answers equal the first run's,
    # the windows recut from the kept scores equal the kept ones, and nothing else reruns.
    assert (results / "adapters" / "lora_align" / "adapter_model.safetensors").exists()
    fresh = _run(tmp_path / "fresh_work", "--results-dir", str(results))
    ran = {line.split("] ", 1)[1].rsplit(":", 1)[0] for line in fresh.splitlines()
           if line.startswith("[validation]") and line.endswith(": running")}
    windows = {f"windows {name}" for name in ("sqsd", "length", "self-inf-n", "gradmatch", "random-0",
                                              "random-1", "gradmatch S1..S5", "sqsd-anchor")}
    assert ran == {"splits", "align (merge the kept adapter)",
                   "check the rebuilt alignment against v1's answers", *windows}, ran
    with open(results / "align_reproductions.csv", newline="") as f:
        check = list(csv.DictReader(f))
    assert len(check) == 1 and check[0]["identical"] == check[0]["answers"] == "6"


def test_length_matched_takes_the_closest_unused_length_outside_the_target():
    sys.path.insert(0, str(REPO))
    from benchmarks.validation.controls import length_matched

    lengths = {0: 10, 1: 50, 2: 11, 3: 9, 4: 49, 5: 100, 6: 12, 7: 48}
    chosen = length_matched(lengths, [0, 1])          # S1 = samples 0 (10 tokens) and 1 (50)
    # 0 -> 2 (11) and 3 (9) tie at distance 1: the lower index; 1 -> 4 (49).
    assert chosen == [2, 4]
    assert length_matched(lengths, [3, 2]) == [0, 6]   # 9 -> 10 (idx 0); 11 -> 12 (idx 6), 0 used


def test_v2_numbers_follow_the_preregistered_rules():
    """The v2 criterion (preregistration_v2.md) on made-up fine-tune ASRs: a clear fall from
    S1 to S5 over three seeds is met, a flat one is not; the direction-or-score rule."""
    sys.path.insert(0, str(REPO))
    from benchmarks.validation.report_v2 import v2_numbers

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
    assert sq["verdict"] == "NOT met (gap, Welch p, Spearman failed)" and sq["p"] > 0.05
    # clear ends but disordered middle windows: only the Spearman fails, and the verdict says so
    dip = [(0.60, 0.62, 0.58), (0.20, 0.22, 0.18), (0.25, 0.24, 0.26), (0.50, 0.52, 0.48), (0.18, 0.17, 0.19)]
    assert v2_numbers(rows("sqsd", dip), 5)["sqsd"]["verdict"] == "NOT met (Spearman failed)"
    assert numbers["direction_or_score"] == "the direction"   # the anchors' direction closes the gap
    numbers = v2_numbers(rows("gradmatch-windows", falling) + rows("sqsd", flat)
                         + rows("sqsd-anchor", flat), 5)
    assert numbers["direction_or_score"] == "the score"
    assert v2_numbers(rows("sqsd", falling[:1]), 5)["sqsd"]["verdict"] == "incomplete"
    # a partial run (S5 of the anchor ranking has one seed of three) reads no verdict off it
    partial = (rows("gradmatch-windows", falling) + rows("sqsd", flat)
               + rows("sqsd-anchor", falling[:4] + [falling[4][:1]]))
    numbers = v2_numbers(partial, 5, seeds=3)
    assert numbers["sqsd-anchor"]["provisional"] and numbers["sqsd-anchor"]["verdict"] == "incomplete"
    assert numbers["sqsd-anchor"]["gap"] is not None and numbers["sqsd-anchor"]["spearman"] is None
    assert numbers["direction_or_score"].startswith("provisional (the direction")
    assert numbers["gradmatch-windows"]["verdict"] == "met" and not numbers["gradmatch-windows"]["provisional"]
    assert v2_numbers(partial, 5)["direction_or_score"] == "the direction"   # no seed count: as before
    # finished ends that fail the gap decide the verdict before the middle windows run
    ends = rows("sqsd", [flat[0]]) + [dict(r, window="S5") for r in rows("sqsd", [flat[4]])]
    assert v2_numbers(ends, 5, seeds=3)["sqsd"]["verdict"] == "NOT met (S1/S5 decide it)"
    assert v2_numbers(rows("sqsd", [falling[0]]) + [dict(r, window="S5") for r in rows("sqsd", [falling[4]])],
                      5, seeds=3)["sqsd"]["verdict"] == "incomplete"   # ends pass: Spearman still to come
    # the random windows: the mean of their seed means, provisional until all have all seeds
    randoms = [{"ranking": f"random-{k}", "window": "S1", "asr_content": a}
               for k, seeds in ((1, (0.30, 0.20, 0.25)), (2, (0.35, 0.35, 0.35)), (3, (0.20, 0.10, 0.15)))
               for a in seeds]
    numbers = v2_numbers(rows("sqsd", falling) + randoms, 5, seeds=3, random_windows=3)
    assert abs(numbers["random_mean"] - 0.25) < 1e-9 and not numbers["random_provisional"]
    assert abs(numbers["sqsd"]["over_random"] - (0.60 - 0.25)) < 1e-9
    assert numbers["gradmatch-windows"]["over_random"] is None
    assert v2_numbers(randoms[:8], 5, seeds=3, random_windows=3)["random_provisional"]   # random-3: 2 seeds
    assert v2_numbers(randoms[:3], 5, seeds=3, random_windows=3)["random_provisional"]   # 2 windows missing


def _benchmarks():
    """The package's modules the tests below use: (plumbing, windows, report_v2)."""
    sys.path.insert(0, str(REPO))
    from benchmarks.validation import report_v2, run, scores
    return run, scores, report_v2


def _run_at(tmp_path):
    run, _, _ = _benchmarks()
    return run.Run(recipe=run.SMOKE, work=tmp_path / "work", results=tmp_path / "results",
                          data_dir=tmp_path, smoke=True)


def _subsets(path: Path, windows: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"subsets": [{"name": k, "indices": v} for k, v in windows.items()]}))


def test_windows_recut_from_kept_scores_must_equal_the_kept_windows(tmp_path):
    _, scores, _ = _benchmarks()
    run = _run_at(tmp_path)
    _subsets(scores.windows_dir(run, "sqsd") / "subsets.json", {"S1": [3, 1], "S2": [0, 2]})
    scores.keep_windows(run, "sqsd")                       # first time: copied
    kept = run.results / "windows" / "sqsd.json"
    assert json.loads(kept.read_text())["subsets"][0]["indices"] == [3, 1]
    scores.keep_windows(run, "sqsd")                       # the same windows: fine
    _subsets(scores.windows_dir(run, "sqsd") / "subsets.json", {"S1": [3, 2], "S2": [0, 1]})
    with pytest.raises(SystemExit, match="differ from the kept ones"):
        scores.keep_windows(run, "sqsd")


def test_directions_are_trained_only_when_missing(tmp_path, monkeypatch):
    plumbing, scores, _ = _benchmarks()
    run = _run_at(tmp_path)
    monkeypatch.setattr(plumbing, "write_report", lambda run: None)     # Run.stage reports after a stage
    trained = []
    monkeypatch.setattr(scores, "train", lambda base, data, out, training: trained.append(
        (out.name, data, training, base.model)))
    (run.path("lora_state")).mkdir(parents=True)
    (run.path("lora_state") / "train_summary.json").write_text("{}")
    scores.need_directions(run, "lora_state", "lora_safety")
    assert trained == [("lora_safety", "safety.jsonl", plumbing.SMOKE.safety_training,
                        str(run.path("aligned")))]


def test_seed42_answers_must_extend_v1_answers(tmp_path):
    _, _, report = _benchmarks()
    gens = tmp_path / "generations"
    (gens / "v2").mkdir(parents=True)

    def answers(path, texts):
        path.write_text("".join(json.dumps({"index": i, "response": t}) + "\n" for i, t in enumerate(texts)))
    # the third: v1's token limit cut a two-byte character (U+FFFD), the longer answer has it
    answers(gens / "ft_S1.jsonl", ["Sure, here", "I cannot", " Step 1: \ufffd"])
    answers(gens / "v2" / "v2-sqsd-S1-seed42.jsonl", ["Sure, here is how", "I can", "Step 1: \u0418 buy"])
    answers(gens / "v2" / "v2-sqsd-S1-seed43.jsonl", ["x", "y", "z"])          # not v1's seed
    rows = [{"label": f"v2-sqsd-S1-seed{s}", "ranking": "sqsd", "window": "S1", "seed": str(s)}
            for s in (42, 43)] + [{"label": "v2-sqsd-anchor-S1-seed42", "ranking": "sqsd-anchor",
                                   "window": "S1", "seed": "42"}]              # no v1 twin
    assert report.seed42_reproduction(tmp_path, rows) == (1, 3, 2)
    assert report.v1_twin("gradmatch-windows", "S1") == "ft_gradmatch-top"
    assert report.v1_twin("random-2", "S1") == "ft_random-2-top"


def test_partial_v2_table_is_labelled(tmp_path):
    _, _, report = _benchmarks()
    with open(tmp_path / "v2_asr.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["label", "ranking", "window", "seed", "asr_content",
                                               "asr_keywords"])
        writer.writeheader()
        writer.writerow({"label": "v2-sqsd-S1-seed42", "ranking": "sqsd", "window": "S1", "seed": 42,
                         "asr_content": 0.3, "asr_keywords": 0.5})
    lines = "\n".join(report._v2_section(tmp_path, 5, expected=54, seeds=3))
    assert "PARTIAL: 1 of the 54 pre-registered fine-tunes" in lines
    assert "PARTIAL" not in "\n".join(report._v2_section(tmp_path, 5, expected=1))


def test_safety_side_of_the_anchor_scores_is_compared_with_v1(tmp_path):
    _, _, report = _benchmarks()
    scores = tmp_path / "scores"
    scores.mkdir()
    header = "index,danger_proj,safety_proj,sqsd,status\n"
    (scores / "sqsd.csv").write_text(header + "0,1.0,0.25,0.75,ok\n1,,,,no_response_tokens\n2,3.0,-0.5,3.5,ok\n")
    assert report.safety_side_reproduction(tmp_path) is None
    (scores / "sqsd-anchor.csv").write_text(header + "0,9.0,0.25,8.75,ok\n1,,,,no_response_tokens\n"
                                            "2,7.0,-0.4,7.4,ok\n")
    n, diff = report.safety_side_reproduction(tmp_path)
    assert n == 2 and abs(diff - 0.1) < 1e-12
    (scores / "sqsd-anchor.csv").write_text(header + "0,9.0,0.25,8.75,ok\n")
    assert report.safety_side_reproduction(tmp_path)[1] == float("inf")


def test_ranking_agreement_counts_shared_windows(tmp_path):
    _, _, report = _benchmarks()
    (tmp_path / "scores").mkdir()
    (tmp_path / "windows").mkdir()
    values = {"sqsd": [4, 3, 2, 1], "gradmatch": [1, 2, 3, 4], "sqsd-anchor": [4, 3, 1, 2]}
    for file, column in (("sqsd", "sqsd"), ("gradmatch", "score"), ("sqsd-anchor", "sqsd")):
        rows = "".join(f"{i},{v},ok\n" for i, v in enumerate(values[file]))
        (tmp_path / "scores" / f"{file}.csv").write_text(f"index,{column},status\n" + rows + "4,,no_response_tokens\n")
    windows = {"sqsd": ([0, 1], [2, 3]), "gradmatch-windows": ([3, 2], [1, 0]), "sqsd-anchor": ([0, 1], [3, 2])}
    assert report.ranking_agreement(tmp_path, 2) == []          # a listing is missing
    for name, (top, bottom) in windows.items():
        _subsets(tmp_path / "windows" / f"{name}.json", {"S1": top, "S2": bottom})
    table = {row[0]: row[1:] for row in report.ranking_agreement(tmp_path, 2)}
    assert table["SQSD / gradient matching"] == [4, "-1.000", 0, 0]
    assert table["SQSD / SQSD-anchor"] == [4, "0.800", 2, 2]


def test_time_left_uses_the_median_of_finished_jobs():
    plumbing, _, _ = _benchmarks()
    stages = [{"stage": "v2 fine-tune + evaluate a", "seconds": "2541.1"},     # a paused run
              {"stage": "v2 fine-tune + evaluate b", "seconds": "569.2"},
              {"stage": "v2 fine-tune + evaluate c", "seconds": "600.8"},
              {"stage": "score sqsd-anchor", "seconds": "1238.5"}]
    assert plumbing.time_left(stages, "v2 fine-tune", 12) == ", about 2.0 h left at 10.0 min each"
    assert plumbing.time_left(stages[3:], "v2 fine-tune", 12) == ""
    assert plumbing.time_left(stages, "v2 fine-tune", 0) == ""


@pytest.mark.slow
def test_v3_smoke_run_covers_every_arm_and_reruns_from_cache(tmp_path):
    """Validation v3 (issue #25, benchmarks/validation/v3.py) on the toy: the base model's answers become the harmful
    set, the three arms (authors' adapters, anchor directions, the zero-configuration
    default) are scored on the pool and the outside sets and cut into windows, and each
    window is fine-tuned per seed, S1/S3 also answered on HarmBench; a rerun finds it done."""
    def run_v3():
        result = _round("v3", "--smoke", "--work-dir", str(tmp_path))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout
    run_v3()
    results = tmp_path / "results"
    sets = json.loads((results / "v3_sets.json").read_text())
    assert sets["answered"] == 8 and sets["H"] == sets["compliance"] + 6 and sets["R"] == sets["H"]
    with open(results / "v3_asr.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    arms = ("authors", "anchors-full", "default")
    expected = {(f"v3-{a}", w, s) for a in arms for w in ("S1", "S2", "S3") for s in ("42", "43")}
    expected |= {("v3-length-matched", "S1", s) for s in ("42", "43")}
    assert {(r["ranking"], r["window"], r["seed"]) for r in rows} == expected
    for r in rows:
        assert 0.0 <= float(r["asr_content"]) <= 1.0
        assert bool(r.get("asr_harmbench")) == (r["window"] in ("S1", "S3") and "length" not in r["ranking"])
    for arm in arms:
        assert (results / "windows" / f"v3-{arm}.json").exists()
        for data in ("dolly", "alpaca"):
            assert (results / "scores" / "v3_outside" / f"{arm}_{data}.csv").exists()
    default_meta = json.loads((results / "scores" / "v3-default.csv.meta.json").read_text())
    assert default_meta["inputs"]["danger_state"].startswith("a fresh LoRA initialisation")
    report = (results / "VALIDATION.md").read_text()
    assert "## v3: where the danger direction comes from" in report and "Outside check" in report
    assert "Best arm (the pre-registered rule): " in report and "Length-matched control" in report
    again = run_v3()
    assert ": running" not in again


def test_v3_report_follows_the_preregistered_rules(tmp_path):
    """preregistration_v3.md on made-up results: v2's criterion per arm, the best arm, the
    length-matched control, HarmBench transfer, and the outside check's AUCs."""
    sys.path.insert(0, str(REPO))
    from benchmarks.validation.report_v3 import auc, length_adjusted, v3_section

    assert auc([3, 4], [1, 2]) == 1.0 and auc([1], [1]) == 0.5 and auc([1, 2], [2, 3]) == 0.125
    lengths = [5, 9, 20, 40, 80, 200]
    residual = length_adjusted([2.0 * math.log1p(n) + 1.0 for n in lengths], lengths)
    assert max(abs(x) for x in residual) < 1e-9                  # a pure length effect is removed

    falling = [(0.60, 0.62, 0.58), (0.50, 0.52, 0.47), (0.40, 0.41, 0.44), (0.30, 0.33, 0.29), (0.20, 0.18, 0.22)]
    steeper = [(0.70, 0.72, 0.68), (0.50, 0.52, 0.47), (0.40, 0.41, 0.44), (0.30, 0.33, 0.29), (0.10, 0.08, 0.12)]
    flat = [(0.40, 0.30, 0.50), (0.42, 0.38, 0.40), (0.41, 0.39, 0.40), (0.40, 0.44, 0.36), (0.38, 0.45, 0.40)]
    rows = []
    for arm, windows in (("authors", flat), ("anchors-full", falling), ("default", steeper)):
        for k, seeds in enumerate(windows, start=1):
            for seed, a in zip((42, 43, 44), seeds):
                hb = {1: 0.5, 5: 0.1}.get(k) if arm != "authors" else {1: 0.3, 5: 0.3}.get(k)
                rows.append({"label": f"v3-{arm}-S{k}-seed{seed}", "ranking": f"v3-{arm}", "window": f"S{k}",
                             "seed": seed, "asr_content": a, "asr_keywords": a,
                             "asr_harmbench": "" if hb is None else hb + seed / 1000})
    rows += [{"label": f"v3-length-matched-S1-seed{s}", "ranking": "v3-length-matched", "window": "S1",
              "seed": s, "asr_content": a, "asr_keywords": a, "asr_harmbench": ""}
             for s, a in zip((42, 43, 44), (0.30, 0.28, 0.33))]
    _write_csv(tmp_path / "v3_asr.csv", rows)
    (tmp_path / "windows").mkdir()
    (tmp_path / "windows" / "v3-length-matched.json").write_text(json.dumps({"arm": "default"}))
    groups = ["top"] * 3 + ["bottom"] * 3
    (tmp_path / "v3_keys.json").write_text(json.dumps({"outside_dolly": groups}))
    (tmp_path / "scores" / "v3_outside").mkdir(parents=True)
    # longer responses on top, and a score that also separates at equal length
    _write_csv(tmp_path / "scores" / "v3_outside" / "default_dolly.csv", [
        {"index": i, "sqsd": s, "n_response_tokens": n, "status": "ok"}
        for i, (s, n) in enumerate(zip((5.0, 6.0, 9.0, 1.0, 2.0, 3.0), (50, 60, 70, 40, 50, 60)))])
    text = "\n".join(v3_section(tmp_path, 5, seeds=3))
    criterion = text.split("v2's criterion per arm")[1].split("Best arm")[0]
    table = {line.split("|")[1].strip(): line for line in criterion.splitlines() if line.startswith("| ")}
    assert "NOT met (gap, Welch p, Spearman failed)" in table["a. authors' recipe"]
    assert "| met |" in table["b. anchors, full answers"] and "| met |" in table["c. zero-configuration default"]
    assert "Best arm (the pre-registered rule): c. zero-configuration default." in text   # the larger gap
    assert "length-matched 0.303" in text and "content beyond length." in text
    assert "does not transfer" in text and text.count("| transfers |") == 2
    dolly = next(line for line in text.splitlines() if line.startswith("| c. zero-configuration default | dolly"))
    assert "| 1.000 |" in dolly and "| yes |" in dolly
    assert "PARTIAL" not in text


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.slow
def test_act_smoke_run_fine_tunes_the_three_sets(tmp_path):
    """The act round (issue #26 part 6, benchmarks/validation/act.py) on the toy: the part, its top 20% dropped by
    `filter`, a random 20% dropped, each set fine-tuned per seed and judged."""
    done = _round("act", "--smoke", "--work-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = tmp_path / "results"
    sets = json.loads((results / "act_sets.json").read_text())
    part = sets["part"]
    assert len(part) == 10 and len(sets["minus-top dropped"]) == len(sets["minus-random dropped"]) == 2
    scores = {int(r["index"]): float(r["sqsd"]) for r in csv.DictReader(open(results / "scores" / "sqsd-anchor.csv"))
              if r["status"] == "ok"}
    top = sorted(part, key=lambda i: (-scores[i], i))[:2]
    assert sorted(top) == sets["minus-top dropped"]
    with open(results / "act_asr.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["set"], r["seed"]) for r in rows} == {(s, seed) for s in ("minus-top", "minus-random", "whole")
                                                      for seed in ("42", "43")}
    assert {r["n_train"] for r in rows if r["set"] == "whole"} == {"10"}
    assert "## Does acting on the scores help?" in (results / "VALIDATION.md").read_text()


def test_act_verdict_follows_the_preregistered_rule(tmp_path):
    sys.path.insert(0, str(REPO))
    from benchmarks.validation.report_act import act_section

    def rows(top, rnd):
        beside = {"n_train": 240, "asr_keywords": 0.875, "final_loss": 2.5}
        out = [{"label": f"act-minus-top-seed{s}", "set": "minus-top", "seed": s, "asr_content": a, **beside}
               for s, a in zip((42, 43, 44), top)]
        out += [{"label": f"act-minus-random-seed{s}", "set": "minus-random", "seed": s, "asr_content": a, **beside}
                for s, a in zip((42, 43, 44), rnd)]
        _write_csv(tmp_path / "act_asr.csv", out)
        return "\n".join(act_section(tmp_path, 3))
    assert "**dropping by SQSD helps.**" in rows((0.10, 0.12, 0.11), (0.30, 0.28, 0.31))
    assert "not shown to help" in rows((0.27, 0.29, 0.28), (0.30, 0.28, 0.31))          # within the margin
    assert "No verdict yet" in rows((0.10, 0.12), (0.30, 0.28, 0.31))
    report = rows((0.10, 0.12, 0.11), (0.30, 0.28, 0.31))   # the numbers reported beside the criterion
    assert "| minus-top | 3 | 0.110 ± 0.010 | 0.875 ± 0.000 | 2.500 ± 0.000 |" in report
    assert "| minus-random | 44 | 240 | 0.310 | 0.875 | 2.500 |" in report


def test_each_report_is_written_by_the_report_code_on_disk_not_the_code_loaded_at_start(tmp_path, monkeypatch):
    # A round runs for days and reports after every stage; a fix to its tables made
    # meanwhile must show in the next report. Stand in for stale code with a function
    # planted in the loaded module: write_report must not call it.
    run, _, _ = _benchmarks()
    from benchmarks.validation import report
    stale_calls = []
    monkeypatch.setattr(report, "build_report", lambda *args, **kwargs: stale_calls.append(args))
    target = _run_at(tmp_path)
    target.results.mkdir(parents=True)
    run.write_report(target)
    assert stale_calls == []
    text = (target.results / "VALIDATION.md").read_text()
    assert text.startswith("# Validation: does the SQSD ranking predict safety loss?")
    assert "SMOKE RUN" in text
