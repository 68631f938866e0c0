"""Validation v3 (issue #25): where SQSD's danger direction comes from.

    python -m benchmarks.validation v3            # on SmolLM2 (about 11 h on 2 CPU cores, resumable)
    python -m benchmarks.validation v3 --smoke    # the same stages on a toy model (minutes)

Pre-registered in ``results/validation/preregistration_v3.md`` before any of its stages ran:
three arms (a: the authors' recipe, adapters trained on full harmful answers and refusals;
b: the same sets as anchors; c: the zero-configuration default of ``sqsd-fast score``), each
cut into S1..S5 and fine-tuned with seeds 42/43/44 under v2's recipe and judge; plus a
length-matched control of the best arm, HarmBench on S1/S5, and an outside check on He et
al.'s published selections. It reuses v1's stages (model, splits, alignment, the benign
state) and plumbing from v1's modules (``run``, ``base``, ``scores``): every stage is a project command, cached, and a
rerun continues where the last one stopped.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from .base import REFUSALS, aligned_run, evaluate, train, trained
from .controls import length_matched, window_indices
from .run import Recipe, Run, Training, append_csv, frozen_training, read_csv, read_jsonl, round_parser, \
    sqsd, time_left, write_jsonl, write_report
from .scores import keep_windows, need_directions, score_file, window_file, windows_dir

RESULTS_TABLE = "v3_asr.csv"
ARMS = ("authors", "anchors-full", "default")        # a, b, c of the pre-registration
OUTSIDE = {"dolly": ("dolly_gradmatch_top100.json", "dolly_gradmatch_bottom100.json"),
           "alpaca": ("alpaca_gradmatch_top100.json", "alpaca_gradmatch_bottom100.json")}


@dataclass(frozen=True)
class V3:
    harmful_rows: tuple[int, int] = (0, 300)     # AdvBench rows the base model answers
    n_he: int | None = None                      # He et al.'s anchors (None: all 10)
    n_outside: int | None = None                 # per top/bottom file (None: all 100)
    n_harmbench: int | None = None               # HarmBench behaviours (None: all 200)
    safety_state_scaling: float = 2.0            # lora_state's alpha / r


FULL, SMOKE = V3(), V3(harmful_rows=(0, 8), n_he=6, n_outside=4, n_harmbench=5)


def stage_sets(run: Run, p: V3) -> None:
    """H (the base model's compliant answers + He et al.'s) and R (refusals to the same
    prompts), in the work directory's splits; their sizes to results/v3_sets.json."""
    d, lo, hi = run.data_dir, *p.harmful_rows
    advbench = read_jsonl(d / "advbench_harmful_behaviors_targets.jsonl")
    write_jsonl(run.splits / "v3_advbench_prompts.jsonl",
                  [{"prompt": advbench[i]["goal"]} for i in range(lo, hi)])
    name = f"v3/base_advbench_{lo}_{hi}"
    run.stage("v3 harmful answers of the base model",
              (run.results / "generations" / f"{name}.summary.json").exists(),
              lambda: evaluate(run, name, "v3_advbench_prompts.jsonl", model=run.model,
                                 max_new_tokens=run.recipe.v2_max_new_tokens, judge="content"))
    answers = read_jsonl(run.results / "generations" / f"{name}.jsonl")
    kept = [a for a in answers if a["verdict"] == "compliance"]
    he = read_jsonl(d / "he_harmful_anchors_10.jsonl")[:p.n_he]
    he_refusals = read_jsonl(d / "he_refusal_anchors_10a.jsonl")[:p.n_he]

    def pair(prompt, answer):
        return {"instruction": prompt, "context": "", "response": answer}

    harmful = [pair(a["prompt"], a["response"]) for a in kept] + [_chat_pair(r) for r in he]
    refusals = [pair(a["prompt"], REFUSALS[(lo + a["index"]) % len(REFUSALS)]) for a in kept]
    refusals += [_chat_pair(r) for r in he_refusals]
    write_jsonl(run.splits / "v3_harmful.jsonl", harmful)
    write_jsonl(run.splits / "v3_refusals.jsonl", refusals)
    sizes = {"advbench_rows": [lo, hi], "answered": len(answers), "compliance": len(kept),
             "verdicts": _count(a["verdict"] for a in answers), "he_harmful": len(he),
             "he_refusals": len(he_refusals), "H": len(harmful), "R": len(refusals)}
    (run.results / "v3_sets.json").write_text(json.dumps(sizes, indent=1) + "\n")


def _chat_pair(record: dict) -> dict:
    user = next(m["content"] for m in record["messages"] if m["role"] == "user")
    answer = [m["content"] for m in record["messages"] if m["role"] == "assistant"][-1]
    return {"instruction": user, "context": "", "response": answer}


def _count(values) -> dict:
    out: dict = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out


def write_outside_and_harmbench(run: Run, p: V3) -> None:
    d, keys = run.data_dir, {}
    for name, files in OUTSIDE.items():
        rows = []
        for group, file in zip(("top", "bottom"), files):
            for i, s in enumerate(json.loads((d / file).read_text(encoding="utf-8"))[:p.n_outside]):
                rows.append({"instruction": s["instruction"], "context": s.get("context", s.get("input", "")),
                             "response": s.get("response", s.get("output", "")), "group": group,
                             "source_index": i})
        write_jsonl(run.splits / f"outside_{name}.jsonl", rows)
        keys[f"outside_{name}"] = [r["group"] for r in rows]
    with open(d / "harmbench_standard_200.csv", newline="", encoding="utf-8") as f:
        behaviours = list(csv.DictReader(f))[:p.n_harmbench]
    write_jsonl(run.splits / "harmbench.jsonl",
                  [{"prompt": b["Goal"], "category": b["SemanticCategory"]} for b in behaviours])
    keys["harmbench_category"] = [b["SemanticCategory"] for b in behaviours]
    # what the report needs to read the scores and answers by row: kept with the results
    (run.results / "v3_keys.json").write_text(json.dumps(keys) + "\n")


def default_scoring_available() -> bool:
    """Whether ``score`` runs with no adapter (issue #25 part 2), asked in a fresh process
    so that a package updated while this long run goes on is seen."""
    check = "import sqsd_fast.anchors as a; a.DEFAULT_DANGER_ANCHORS; a.DEFAULT_SAFETY_ANCHORS"
    return subprocess.run([sys.executable, "-c", check], capture_output=True).returncode == 0


def prepare_arm(run: Run, p: V3, arm: str) -> list[str] | None:
    """Build what the arm's score reads; its ``score`` arguments (model and the directions),
    or None where the arm cannot run yet (the default before the package has it)."""
    aligned, r = str(run.path("aligned")), run.recipe
    if arm == "default":
        return ["--model", aligned] if default_scoring_available() else None
    need_directions(run, "lora_state")
    state = run.path("lora_state")
    aligned_run = replace(run, model=aligned)
    if arm == "authors":
        danger, safety = run.path("lora_danger_full"), run.path("lora_safety_full")
        for out, data, training in ((danger, "v3_harmful.jsonl", r.danger_training),
                                    (safety, "v3_refusals.jsonl", r.safety_training)):
            run.stage(f"v3 train {out.name}", trained(out),
                      lambda out=out, data=data, training=training: train(aligned_run, data, out, training))
        return ["--model", aligned, "--danger-state", state, "--danger-direction", danger,
                "--safety-direction", safety]
    danger, safety = run.path("anchor_danger_full"), run.path("anchor_safety_full")
    for out, data in ((danger, "v3_harmful.jsonl"), (safety, "v3_refusals.jsonl")):
        run.stage(f"v3 anchor direction {out.name}", (out / "adapter_config.json").exists(),
                  lambda out=out, data=data: sqsd(
                      "anchor-direction", "--model", aligned, "--state", state, "--anchors",
                      run.splits / data, "--max-length", r.max_length, "--out", out, "--quiet"))
    return ["--model", aligned, "--danger-state", state, "--danger-direction", danger,
            "--safety-direction", safety, "--safety-state", state,
            "--safety-state-scaling", str(p.safety_state_scaling)]


def scored(out: Path) -> bool:
    return out.exists() and Path(str(out) + ".meta.json").exists()


def score(run: Run, label: str, args: list, data: Path, out: Path) -> None:
    resume = ["--resume"] if any(out.parent.glob(out.name + ".*")) else []
    out.parent.mkdir(parents=True, exist_ok=True)
    run.stage(label, scored(out), lambda: sqsd(
        "score", *args, "--data", data, "--out", out, "--max-length", run.recipe.max_length,
        "--no-progress", *resume))


def ranking(arm: str) -> str:
    return f"v3-{arm}"


def stage_arms(run: Run, p: V3) -> set[str]:
    """Scores, windows and outside check of every arm that can run now (its name is
    returned). Each arm's outside check follows its pool scores at once (changed 2026-12-06,
    after arm a's pool scores, from all pool scores first): a later session then never
    retrains an arm's adapters only for its outside check. Neither is a fine-tune."""
    ready = set()
    for arm in ARMS:
        out = score_file(run, ranking(arm))
        args = None if scored(out) and all(scored(_outside(run, arm, n)) for n in OUTSIDE) \
            else prepare_arm(run, p, arm)
        if args is None and not scored(out):
            print(f"[validation] v3: arm {arm} waits for the package's default scoring", flush=True)
            continue
        score(run, f"v3 score {arm}", args, run.splits / "pool.jsonl", out)
        windows = windows_dir(run, ranking(arm))
        run.stage(f"v3 windows {arm}", (windows / "subsets.json").exists(), lambda: sqsd(
            "subsets", "--scores", out, "--data", run.splits / "pool.jsonl", "--out-dir", windows,
            "--num", run.recipe.num_windows, "--window", run.recipe.window, "--column", "sqsd"))
        keep_windows(run, ranking(arm))
        for name in OUTSIDE:
            outside = _outside(run, arm, name)
            if not scored(outside):
                score(run, f"v3 outside check {arm} {name}", args or prepare_arm(run, p, arm),
                      run.splits / f"outside_{name}.jsonl", outside)
        ready.add(arm)
    return ready


def _outside(run: Run, arm: str, name: str) -> Path:
    return run.results / "scores" / "v3_outside" / f"{arm}_{name}.csv"


def label(arm: str, window: str, seed: int) -> str:
    return f"v3-{arm}-{window}-seed{seed}"


def finetune(run: Run, training: Training, name: str, window_data: Path, seed: int,
             tag: str, harmbench: bool) -> None:
    """One fine-tune from the aligned model, its AdvBench (and HarmBench) answers, one row."""
    aligned = str(run.path("aligned"))
    out = run.path("finetunes", tag)
    if not trained(out):
        train(replace(run, model=aligned), window_data, out, training, "--seed", str(seed))
    common = dict(model=aligned, adapter=out, max_new_tokens=run.recipe.v2_max_new_tokens, judge="content")
    summary = evaluate(run, f"v3/{tag}", "eval_harmful.jsonl", **common)
    row = {"label": tag, "ranking": name, "window": window_data.stem, "seed": seed,
           "n": summary["n"], "asr_content": summary["asr"], "asr_keywords": 1.0 - summary["refusal_rate"],
           **{f"n_{k}": n for k, n in summary["verdicts"].items()},
           "final_loss": json.loads((out / "train_summary.json").read_text()).get("final_loss")}
    if harmbench:
        hb = evaluate(run, f"v3/hb-{tag}", "harmbench.jsonl", **common)
        row["asr_harmbench"] = hb["asr"]
    append_csv(run.results / RESULTS_TABLE, row)


def jobs(recipe: Recipe, arms: set[str]) -> list[tuple[str, str, int]]:
    """(arm, window, seed) in the pre-registered order, for the arms that can run now."""
    last = f"S{recipe.num_windows}"
    order = [(arm, w) for w in ("S1", last) for arm in ARMS]
    order += [(arm, f"S{k}") for k in range(2, recipe.num_windows) for arm in ARMS]
    return [(a, w, s) for a, w in order if a in arms for s in recipe.v2_seeds]


def best_arm(rows: list[dict], recipe: Recipe) -> str | None:
    """The largest S1 - S5 gap once S1 and S5 of every arm have all seeds (the criterion's
    other parts, which need the middle windows, are not known then: the pre-registration
    names the best arm by its gap)."""
    last, means = f"S{recipe.num_windows}", {}
    for arm in ARMS:
        for window in ("S1", last):
            asr = [float(r["asr_content"]) for r in rows if r["ranking"] == ranking(arm) and r["window"] == window]
            if len(asr) < len(recipe.v2_seeds):
                return None
            means[arm, window] = sum(asr) / len(asr)
    return max(ARMS, key=lambda a: means[a, "S1"] - means[a, last])


def length_matched_window(run: Run, arm: str) -> Path:
    out = windows_dir(run, f"v3-length-matched-{arm}") / "S1.jsonl"
    kept = run.results / "windows" / "v3-length-matched.json"
    if not out.exists():
        lengths = {int(r["index"]): int(r["n_response_tokens"])
                   for r in read_csv(score_file(run, ranking(arm))) if r["status"] == "ok"}
        s1 = window_indices(run, ranking(arm), "S1")
        chosen = length_matched(lengths, s1)
        pool = read_jsonl(run.splits / "pool.jsonl")
        write_jsonl(out, [pool[i] for i in chosen])
        if not kept.exists():
            kept.write_text(json.dumps({"arm": arm, "pool_indices": chosen,
                                        "response_tokens": [lengths[i] for i in chosen],
                                        "s1_response_tokens": [lengths[i] for i in s1]}, indent=1) + "\n")
    return out


def stage_finetunes(run: Run, training: Training, arms: set[str]) -> None:
    r, table = run.recipe, run.results / RESULTS_TABLE
    done = {row["label"] for row in read_csv(table)}
    run.stage("v3 aligned model on HarmBench",
              (run.results / "generations" / "v3" / "hb-aligned.summary.json").exists(),
              lambda: evaluate(run, "v3/hb-aligned", "harmbench.jsonl", model=str(run.path("aligned")),
                                 max_new_tokens=r.v2_max_new_tokens, judge="content"))
    queue = jobs(r, arms)
    first_middle = next((i for i, (_, w, _) in enumerate(queue) if w not in ("S1", f"S{r.num_windows}")),
                        len(queue))
    if set(arms) == set(ARMS):       # the length-matched control goes before the middle windows
        queue[first_middle:first_middle] = [("length-matched", "S1", s) for s in r.v2_seeds]
    total = len(jobs(r, set(ARMS))) + len(r.v2_seeds)
    for arm, window, seed in queue:
        if arm == "length-matched":
            best = best_arm(read_csv(table), r)
            if best is None:
                continue
            name, data = "v3-length-matched", length_matched_window(run, best)
        else:
            name, data = ranking(arm), window_file(run, ranking(arm), window)
        tag = label(arm, window, seed)
        if tag in done:
            continue
        print(f"[validation] v3: {len(done)} of {total} fine-tunes done"
              + time_left(read_csv(run.results / "stages.csv"), "v3 fine-tune", total - len(done)), flush=True)
        harmbench = arm != "length-matched" and window in ("S1", f"S{r.num_windows}")
        run.stage(f"v3 fine-tune + evaluate {tag}", False, lambda: finetune(
            run, training, name, data, seed, tag, harmbench))
        done.add(tag)


def main(argv=None) -> int:
    parser = round_parser(__doc__.splitlines()[0])
    parser.add_argument("--until", choices=("scores", "all"), default="all",
                        help="stop after the arms' scores and outside checks (scores) or not")
    args = parser.parse_args(argv)
    run = aligned_run(args)
    p = SMOKE if args.smoke else FULL
    training = frozen_training(run)
    write_outside_and_harmbench(run, p)
    stage_sets(run, p)
    arms = stage_arms(run, p)
    if args.until == "all":
        stage_finetunes(run, training, arms)
    write_report(run)
    print("[validation] v3: this run's work is done"
          + ("" if arms == set(ARMS) else f" (arms still waiting: {sorted(set(ARMS) - arms)})"), flush=True)
    return 0
