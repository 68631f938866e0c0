"""v1's fine-tunes: the calibration ladder that freezes the recipe, then one fine-tune per
window (S1 against S5 and a random window first), each evaluated on the held-out prompts."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from .base import evaluate, train, trained
from .run import Run, Training, append_csv, read_csv, write_report
from .scores import need_directions, window_file


def finetune_and_evaluate(run: Run, label: str, data: Path, training: Training,
                          monitor: bool = False) -> dict:
    """Fine-tune a fresh LoRA on ``data`` from the aligned base, then the harmful evaluation."""
    aligned = replace(run, model=str(run.path("aligned")))
    out = run.path("finetunes", label)
    extra = []
    if monitor:
        extra = ["--monitor-direction", f"danger={run.path('lora_danger')}",
                 "--monitor-direction", f"safety={run.path('lora_safety')}",
                 "--monitor-steps", str(run.recipe.drift_every)]
    if not trained(out):
        train(aligned, data, out, training, *extra)
    if monitor and (out / "drift.csv").exists():
        dest = run.results / "drift" / f"{label}.csv"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "drift.csv", dest)
    summary = evaluate(run, f"ft_{label}", "eval_harmful.jsonl", model=str(run.path("aligned")),
                       adapter=out)
    train_summary = json.loads((out / "train_summary.json").read_text())
    return {"asr": summary["asr"], "n": summary["n_judged"],
            "n_attack_success": summary["n_attack_success"],
            "final_loss": train_summary.get("final_loss")}


def stage_calibration(run: Run) -> Training:
    """Walk the pre-registered ladder on the calibration random window; freeze the recipe."""
    r = run.recipe
    frozen = run.results / "recipe.json"
    if frozen.exists():
        return Training(**json.loads(frozen.read_text())["finetune"])
    data = window_file(run, f"random-{r.calibration_seed}", "S1")
    tried = {int(row["rung"]): float(row["asr"])
             for row in read_csv(run.results / "calibration.csv")}
    lo, hi = r.target_asr
    rung = r.ladder_start
    while True:
        if rung not in tried:
            training, result = r.ladder[rung], {}
            run.stage(f"calibrate rung {rung} (lr {training.learning_rate}, "
                      f"{training.num_epochs} epochs)", False, lambda: result.update(
                          finetune_and_evaluate(run, f"calibration_{rung}", data, training)))
            append_csv(run.results / "calibration.csv", {
                "rung": rung, "learning_rate": training.learning_rate,
                "num_epochs": training.num_epochs, "batch_size": training.batch_size,
                "asr": result["asr"], "n": result["n"], "final_loss": result["final_loss"]})
            tried[rung] = result["asr"]
        asr = tried[rung]
        if lo <= asr <= hi:
            break
        nxt = rung + 1 if asr < lo else rung - 1
        if not 0 <= nxt < len(r.ladder) or nxt in tried:   # the ladder's end, or oscillating
            break
        rung = nxt
    inside = [k for k, v in tried.items() if lo <= v <= hi]
    chosen = min(inside) if inside else min(tried, key=lambda k: abs(tried[k] - (lo + hi) / 2))
    training = r.ladder[chosen]
    frozen.write_text(json.dumps({
        "finetune": asdict(training), "rung": chosen, "in_target": bool(inside),
        "target_asr": list(r.target_asr), "calibration_asr": tried[chosen],
        "frozen_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"},
        "max_length": r.max_length}, indent=1) + "\n")
    print(f"[validation] fine-tune recipe frozen: {training}", flush=True)
    return training


def stage_finetunes(run: Run, training: Training) -> None:
    r = run.recipe
    # Ordered so that a run cut short has the most telling numbers first: S1 against S5
    # and against one random window, then the middle windows, then the rest.
    first_random, *other_randoms = [(f"random-{s}", "S1", False) for s in r.random_seeds]
    jobs = [("sqsd", "S1", True), ("sqsd", f"S{r.num_windows}", True), first_random]
    jobs += [("sqsd", f"S{k}", False) for k in (3, 2, 4) if k < r.num_windows]
    jobs += [("sqsd", f"S{k}", False) for k in range(5, r.num_windows)]
    jobs += other_randoms
    jobs += [(name, "S1", False) for name in ("length", "self-inf-n", "gradmatch")]
    table = run.results / "asr.csv"
    done = {row["label"] for row in read_csv(table)}
    queue = [job for job in jobs if (job[1] if job[0] == "sqsd" else f"{job[0]}-top") not in done]
    deferred = set()
    while queue:
        name, window, monitor = queue.pop(0)
        label = window if name == "sqsd" else f"{name}-top"
        if monitor and not drift_monitor_available():
            if label not in deferred and queue:      # wait for the monitor: others first
                deferred.add(label)
                queue.append((name, window, monitor))
                continue
            print(f"[validation] warning: train-adapter has no --monitor-direction; "
                  f"{label} runs without the drift log", flush=True)
            monitor = False
        if monitor:
            need_directions(run, "lora_danger", "lora_safety")
        result = {}
        run.stage(f"fine-tune + evaluate {label}", False, lambda: result.update(
            finetune_and_evaluate(run, label, window_file(run, name, window), training, monitor)))
        append_csv(table, {"label": label, "ranking": name, "window": window, **result})
        write_report(run)


def drift_monitor_available() -> bool:
    """Whether train-adapter takes --monitor-direction (asked in a fresh process, so that
    a package updated while this long run goes on is seen)."""
    check = ("import dataclasses, sys; from sqsd_fast.options.train_adapter import TrainAdapterOptions "
             "as O; sys.exit(0 if 'monitor_direction' in {f.name for f in dataclasses.fields(O)} "
             "else 1)")
    return subprocess.run([sys.executable, "-c", check], capture_output=True).returncode == 0
