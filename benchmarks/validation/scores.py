"""The directions (danger, safety, state adapters), every ranking's scores of the pool, and
the windows cut from them (kept with the results, and checked against them when recut)."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from .base import train, trained
from .run import Run, sqsd


# The adapters trained on the aligned model: data file and the recipe's training field.
DIRECTIONS = {"lora_danger": ("danger.jsonl", "danger_training"),
              "lora_safety": ("safety.jsonl", "safety_training"),
              "lora_state": ("state.jsonl", "state_training")}


def need_directions(run: Run, *names: str) -> None:
    """Train the named adapters if the work directory lacks them. Called only before a stage
    that is not cached, so a session that resumes from committed scores trains only what the
    remaining stages read (each adapter costs 3 to 16 minutes on the CPU)."""
    base = replace(run, model=str(run.path("aligned")))
    for name in names:
        data, field_name = DIRECTIONS[name]
        out = run.path(name)
        run.stage(f"train {name}", trained(out), lambda data=data, out=out, field_name=field_name:
                  train(base, data, out, getattr(run.recipe, field_name)))


def score_file(run: Run, name: str) -> Path:
    (run.results / "scores").mkdir(parents=True, exist_ok=True)
    return run.results / "scores" / f"{name}.csv"


def stage_scores(run: Run) -> None:
    aligned, pool = str(run.path("aligned")), run.splits / "pool.jsonl"
    common = ["--data", pool, "--max-length", run.recipe.max_length, "--no-progress"]

    def scored(name):
        out = score_file(run, name)
        return out.exists() and Path(str(out) + ".meta.json").exists()

    def resume(name):
        return ["--resume"] if any(score_file(run, name).parent.glob(f"{name}.csv.*")) else []

    if not scored("sqsd"):
        need_directions(run, "lora_state", "lora_danger", "lora_safety")
    run.stage("score sqsd", scored("sqsd"), lambda: sqsd(
        "score", "--model", aligned, "--danger-state", run.path("lora_state"),
        "--danger-direction", run.path("lora_danger"), "--safety-direction", run.path("lora_safety"),
        "--out", score_file(run, "sqsd"), *common, *resume("sqsd")))
    baselines = {"length": ["--method", "length"],
                 "self-inf-n": ["--method", "self-inf-n", "--state", run.path("lora_state")],
                 "gradmatch": ["--method", "gradmatch", "--state", run.path("lora_state"),
                               "--harmful-anchors", run.splits / "gradmatch_harmful.jsonl",
                               "--safe-anchors", run.splits / "gradmatch_safe.jsonl"]}
    for seed in (run.recipe.calibration_seed, *run.recipe.random_seeds):
        baselines[f"random-{seed}"] = ["--method", "random", "--seed", str(seed)]
    for name, args in baselines.items():
        if not scored(name) and "--state" in args:
            need_directions(run, "lora_state")
        run.stage(f"baseline {name}", scored(name), lambda name=name, args=args: sqsd(
            "baseline", "--model", aligned, *args, "--out", score_file(run, name), *common,
            *resume(name)))


def windows_dir(run: Run, name: str) -> Path:
    return run.path("windows", name)


def stage_windows(run: Run) -> None:
    r = run.recipe
    for name in ["sqsd", "length", "self-inf-n", "gradmatch",
                 *(f"random-{s}" for s in (r.calibration_seed, *r.random_seeds))]:
        out = windows_dir(run, name)
        num = r.num_windows if name == "sqsd" else 1
        column = "sqsd" if name == "sqsd" else "score"
        run.stage(f"windows {name}", (out / "subsets.json").exists(), lambda name=name, out=out,
                  num=num, column=column: sqsd(
                      "subsets", "--scores", score_file(run, name), "--data",
                      run.splits / "pool.jsonl", "--out-dir", out, "--num", num,
                      "--window", r.window, "--column", column))
        keep_windows(run, name)


def keep_windows(run: Run, name: str) -> None:
    """Copy a ranking's window listing to the results, or, where the results hold one (a
    later session recut the windows from the committed scores), check that every window has
    the same samples: fine-tuning other windows under the same label would be silently wrong."""
    made, kept = windows_dir(run, name) / "subsets.json", run.results / "windows" / f"{name}.json"
    if not made.exists():
        return
    if not kept.exists():
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made, kept)
        return

    def indices(path):
        return {w["name"]: w["indices"] for w in json.loads(path.read_text())["subsets"]}
    if indices(made) != indices(kept):
        raise SystemExit(f"[validation] the windows cut now in {made} differ from the kept ones "
                         f"in {kept}; the scores or the pool changed. Find out why before "
                         f"fine-tuning (delete {kept} only if the new windows are meant).")


def window_file(run: Run, name: str, window: str) -> Path:
    found = sorted(windows_dir(run, name).glob(f"{window}.*"))
    found = [p for p in found if p.suffix in (".jsonl", ".json", ".csv", ".parquet")]
    if not found:
        raise SystemExit(f"[validation] no data file for window {window} in {windows_dir(run, name)}")
    return found[0]
