"""v2 (issue #17): three seeds per window, 128-token answers, the content judge, and
SQSD-anchor (SQSD with the harmful anchors' direction)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from .base import evaluate, train, trained
from .controls import stage_control_windows
from .run import Recipe, Run, Training, append_csv, read_csv, sqsd, time_left
from .scores import keep_windows, need_directions, score_file, window_file, windows_dir


# Pre-registered in results/validation/preregistration_v2.md (2026-12-03) before any of
# these fine-tunes ran: the v1 windows of SQSD, gradient matching and the random rankings,
# plus SQSD with the anchors' direction, each fine-tuned with seeds 42, 43, 44 (the frozen
# recipe otherwise) and evaluated with 128-token answers under the content judge.

V2_TABLE = "v2_asr.csv"


def stage_anchor_direction(run: Run) -> None:
    """SQSD-anchor: the harmful anchors' mean induced update at the state as the danger
    direction (``sqsd-fast anchor-direction``), scored and cut into windows like SQSD."""
    r, aligned = run.recipe, str(run.path("aligned"))
    direction = run.path("lora_anchor_danger")
    out = score_file(run, "sqsd-anchor")
    scored = out.exists() and Path(str(out) + ".meta.json").exists()
    if not scored:                 # the direction and adapters matter only to the score
        need_directions(run, "lora_state", "lora_safety")
        run.stage("anchor direction", (direction / "adapter_config.json").exists(), lambda: sqsd(
            "anchor-direction", "--model", aligned, "--state", run.path("lora_state"),
            "--anchors", run.splits / "gradmatch_harmful.jsonl", "--response-tokens",
            r.v2_anchor_response_tokens, "--max-length", r.max_length, "--out", direction, "--quiet"))
    resume = ["--resume"] if any(out.parent.glob("sqsd-anchor.csv.*")) else []
    run.stage("score sqsd-anchor", scored, lambda: sqsd(
        "score", "--model", aligned, "--danger-state", run.path("lora_state"),
        "--danger-direction", direction, "--safety-direction", run.path("lora_safety"),
        "--out", out, "--data", run.splits / "pool.jsonl", "--max-length", r.max_length,
        "--no-progress", *resume))
    windows = windows_dir(run, "sqsd-anchor")
    run.stage("windows sqsd-anchor", (windows / "subsets.json").exists(), lambda: sqsd(
        "subsets", "--scores", out, "--data", run.splits / "pool.jsonl", "--out-dir", windows,
        "--num", r.num_windows, "--window", r.window, "--column", "sqsd"))
    keep_windows(run, "sqsd-anchor")


def v2_jobs(recipe: Recipe) -> list[tuple[str, str, int]]:
    """(ranking, window, seed), in the pre-registered order of importance: every ranking's
    S1 and S5, then the random windows, then the middle windows; seeds innermost, so a run
    cut short has whole windows."""
    last = f"S{recipe.num_windows}"
    ranked = ("sqsd", "gradmatch-windows", "sqsd-anchor")
    order = [(name, w) for w in ("S1", last) for name in ranked]
    order += [(f"random-{s}", "S1") for s in recipe.random_seeds]
    order += [(name, f"S{k}") for k in range(2, recipe.num_windows) for name in ranked]
    return [(name, window, seed) for name, window in order for seed in recipe.v2_seeds]


def v2_label(name: str, window: str, seed: int) -> str:
    return f"v2-{name}-{window}-seed{seed}"


def stage_v2(run: Run, training: Training) -> None:
    r = run.recipe
    stage_anchor_direction(run)
    stage_control_windows(run)      # gradient matching's S1..S5 (made by the controls of v1)
    table = run.results / V2_TABLE
    done = {row["label"] for row in read_csv(table)}
    aligned = replace(run, model=str(run.path("aligned")))
    jobs = v2_jobs(r)
    for name, window, seed in jobs:
        label = v2_label(name, window, seed)
        if label in done:
            continue
        print(f"[validation] v2: {len(done)} of {len(jobs)} fine-tunes done"
              + time_left(read_csv(run.results / "stages.csv"), "v2 fine-tune", len(jobs) - len(done)),
              flush=True)

        def job(name=name, window=window, seed=seed, label=label):
            out = run.path("finetunes", label)
            if not trained(out):
                train(aligned, window_file(run, name, window), out, training, "--seed", str(seed))
            summary = evaluate(run, f"v2/{label}", "eval_harmful.jsonl", model=str(run.path("aligned")),
                               adapter=out, max_new_tokens=r.v2_max_new_tokens, judge="content")
            final_loss = json.loads((out / "train_summary.json").read_text()).get("final_loss")
            append_csv(table, {"label": label, "ranking": name, "window": window, "seed": seed,
                               "n": summary["n"], "asr_content": summary["asr"],
                               "asr_keywords": 1.0 - summary["refusal_rate"],
                               **{f"n_{v}": k for v, k in summary["verdicts"].items()},
                               "final_loss": final_loss})

        run.stage(f"v2 fine-tune + evaluate {label}", False, job)
        done.add(label)
