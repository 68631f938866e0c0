"""Does acting on the scores help? (issue #26 part 6; results/validation/preregistration_act.md)

    python -m benchmarks.validation act            # on SmolLM2, after validation v3 (hours, CPU)
    python -m benchmarks.validation act --smoke    # the same stages on a toy model (minutes)

300 scored pool samples; fine-tune on all of them, on them without the top 20% by v2's
SQSD-anchor ranking (``sqsd-fast filter``), and without a random 20%; three seeds each;
content-judge ASR on the held-out AdvBench prompts. Reuses v1's plumbing (``run``, ``base``): every
stage is a project command, cached, resumable.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from .base import aligned_run, evaluate, train, trained
from .report_act import SETS, TABLE
from .run import Run, Training, append_csv, frozen_training, read_csv, read_jsonl, round_parser, write_jsonl, \
    write_report
from .scores import score_file
from .v2 import stage_anchor_direction
N_PART, DROP = 300, 0.2


def part_indices(scores: list[dict], n: int) -> list[int]:
    """The documented part: a seeded permutation of the scored pool indices, first n."""
    ok = sorted(int(r["index"]) for r in scores if r["status"] == "ok")
    order = np.random.default_rng(0).permutation(len(ok))
    return sorted(ok[i] for i in order[:n])


def write_sets(run: Run, n: int) -> dict[str, Path]:
    """The three data files (records in pool order) and, kept with the results, which pool
    indices each holds."""
    from sqsd_fast.app.filtering import filter_data
    from sqsd_fast.io.writers import write_rows
    scores = read_csv(score_file(run, "sqsd-anchor"))
    part = part_indices(scores, n)
    pool = read_jsonl(run.splits / "pool.jsonl")
    out = run.path("act")
    out.mkdir(parents=True, exist_ok=True)
    whole = out / "whole.jsonl"
    write_jsonl(whole, [pool[i] for i in part])
    # scores of the part, row i = record i of whole.jsonl, for `filter`
    by_index = {int(r["index"]): r for r in scores}
    part_scores = out / "whole_scores.csv"
    write_rows(part_scores, [{**by_index[i], "index": k} for k, i in enumerate(part)])
    filter_data(part_scores, whole, out / "minus-top.jsonl", drop_top=DROP, column="sqsd")
    dropped_top = [part[d["index"]] for d in json.loads((out / "minus-top.jsonl.filter.json").read_text())["dropped"]]
    k = int(np.floor(DROP * len(part) + 0.5))
    random_drop = sorted(part[p] for p in np.random.default_rng(1).permutation(len(part))[:k])
    write_jsonl(out / "minus-random.jsonl", [pool[i] for i in part if i not in set(random_drop)])
    listing = {"part": part, "minus-top dropped": sorted(dropped_top), "minus-random dropped": random_drop}
    kept = run.results / "act_sets.json"
    if kept.exists() and json.loads(kept.read_text()) != listing:
        raise SystemExit(f"[validation] the act sets drawn now differ from the kept {kept}; find out why")
    kept.write_text(json.dumps(listing) + "\n")
    return {name: out / f"{name}.jsonl" for name in SETS}


def stage_finetunes(run: Run, training: Training, files: dict[str, Path]) -> None:
    table = run.results / TABLE
    done = {row["label"] for row in read_csv(table)}
    aligned = str(run.path("aligned"))
    for name in SETS:
        for seed in run.recipe.v2_seeds:
            label = f"act-{name}-seed{seed}"
            if label in done:
                continue

            def job(name=name, seed=seed, label=label):
                out = run.path("finetunes", label)
                if not trained(out):
                    train(replace(run, model=aligned), files[name], out, training, "--seed", str(seed))
                summary = evaluate(run, f"act/{label}", "eval_harmful.jsonl", model=aligned, adapter=out,
                                     max_new_tokens=run.recipe.v2_max_new_tokens, judge="content")
                append_csv(table, {"label": label, "set": name, "seed": seed, "n_train": sum(
                    1 for _ in open(files[name], encoding="utf-8")), "asr_content": summary["asr"],
                    "asr_keywords": 1.0 - summary["refusal_rate"],
                    "final_loss": json.loads((out / "train_summary.json").read_text()).get("final_loss")})
            run.stage(f"act fine-tune + evaluate {label}", False, job)


def main(argv=None) -> int:
    args = round_parser(__doc__.splitlines()[0]).parse_args(argv)
    run = aligned_run(args)
    if args.smoke:                  # the smoke run scores its own SQSD-anchor ranking first
        stage_anchor_direction(run)
    training = frozen_training(run)
    n = N_PART if not args.smoke else 10
    stage_finetunes(run, training, write_sets(run, n))
    write_report(run)
    return 0
