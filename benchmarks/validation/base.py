"""v1's first stages, which every round starts from (each cached): the base model, the
disjoint splits, the alignment (trained, or merged from the kept adapter) and its check;
``train`` and ``evaluate``, the two commands every fine-tune goes through."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from .run import Run, Training, append_csv, read_jsonl, round_run, sqsd, write_jsonl

# Refusal styles the alignment and the safety direction teach. Each holds a phrase of the
# keyword judge's list (Zou et al. 2023), so an aligned answer is judged a refusal.
REFUSALS = (
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I cannot assist with this request. Providing that information would be dangerous "
    "and unethical.",
    "I apologize, but I won't help with that. If you are in trouble, please reach out to a "
    "qualified professional or the proper authorities.",
    "As an AI assistant, I must decline: this request involves illegal or harmful activity.",
    "Sorry, I can't do that. I'm not able to help with anything that could hurt others or "
    "break the law.",
)


def stage_model(run: Run) -> None:
    if run.smoke:
        target = run.path("toy_model")
        if not (target / "config.json").exists():
            from sqsd_fast.testing.toy_model import build_toy_model, build_toy_tokenizer
            tok = build_toy_tokenizer()
            model = build_toy_model(tok, hidden_size=64, intermediate_size=128, num_layers=2,
                                    num_heads=4, seed=0)
            model.save_pretrained(target)
            tok.save_pretrained(target)
        run.model = str(target)
        return
    from sqsd_fast.models import fetch_smollm2
    run.model = str(fetch_smollm2())


def stage_splits(run: Run) -> None:
    """The disjoint splits, written once; their indices go to results/splits.json."""
    r, d = run.recipe, run.data_dir
    advbench = read_jsonl(d / "advbench_harmful_behaviors_targets.jsonl")
    alpaca = json.loads((d / "alpaca_5000.json").read_text(encoding="utf-8"))
    dolly = read_jsonl(d / "dolly_safety_related_387.jsonl")
    anchors = read_jsonl(d / "refusal_anchors_40.jsonl")[:r.n_refusal_anchors]

    # Alpaca: one seeded permutation, cut into disjoint blocks. Benign eval prompts must
    # stand alone, so that block takes only samples without an input field.
    order = [int(i) for i in np.random.default_rng(r.split_seed).permutation(len(alpaca))]
    free = list(order)

    def take(n, keep=lambda s: True):
        chosen = [i for i in free if keep(alpaca[i])][:n]
        for i in chosen:
            free.remove(i)
        return chosen

    align_benign = take(r.n_align_benign)
    state = take(r.n_state)
    benign_eval = take(r.n_benign_eval, lambda s: not s["input"].strip())
    pool_alpaca = take(r.n_pool_alpaca)
    pool_dolly = list(range(len(dolly)))[:r.n_pool_dolly]

    def alpaca_record(i, **extra):
        s = alpaca[i]
        return {"instruction": s["instruction"], "context": s["input"], "response": s["output"],
                **extra}

    def refusal(i):
        return REFUSALS[i % len(REFUSALS)]

    def anchor_record(a):
        user = next(m["content"] for m in a["messages"] if m["role"] == "user")
        answer = [m["content"] for m in a["messages"] if m["role"] == "assistant"][-1]
        return {"instruction": user, "context": "", "response": answer}

    lo, hi = r.align_harmful
    align = [{"instruction": advbench[i]["goal"], "context": "", "response": refusal(i)}
             for i in range(lo, hi)] + [alpaca_record(i) for i in align_benign]
    np.random.default_rng(r.split_seed + 1).shuffle(align)
    out = run.splits
    write_jsonl(out / "align.jsonl", align)
    lo, hi = r.eval_harmful
    write_jsonl(out / "eval_harmful.jsonl", [{"prompt": advbench[i]["goal"]} for i in range(lo, hi)])
    write_jsonl(out / "eval_benign.jsonl", [{"prompt": alpaca[i]["instruction"]} for i in benign_eval])
    lo, hi = r.danger
    write_jsonl(out / "danger.jsonl", [{"instruction": advbench[i]["goal"], "context": "",
                                        "response": advbench[i]["target"]} for i in range(lo, hi)])
    lo, hi = r.safety_advbench
    write_jsonl(out / "safety.jsonl", [anchor_record(a) for a in anchors] + [
        {"instruction": advbench[i]["goal"], "context": "", "response": refusal(i)}
        for i in range(lo, hi)])
    write_jsonl(out / "state.jsonl", [alpaca_record(i) for i in state])
    lo, hi = r.gradmatch_harmful
    write_jsonl(out / "gradmatch_harmful.jsonl", [
        {"instruction": advbench[i]["goal"], "context": "", "response": advbench[i]["target"]}
        for i in range(lo, hi)])
    write_jsonl(out / "gradmatch_safe.jsonl", [anchor_record(a) for a in anchors])
    pool = [{"instruction": dolly[i]["instruction"], "context": dolly[i]["context"],
             "response": dolly[i]["response"], "source": "dolly", "source_index": i}
            for i in pool_dolly] + [alpaca_record(i, source="alpaca", source_index=i)
                                     for i in pool_alpaca]
    write_jsonl(out / "pool.jsonl", pool)

    splits = {
        "advbench": {"align (refusals)": list(r.align_harmful), "danger (targets)": list(r.danger),
                     "safety (refusals)": list(r.safety_advbench),
                     "gradmatch harmful anchors": list(r.gradmatch_harmful),
                     "evaluation": list(r.eval_harmful)},
        "alpaca_permutation_seed": r.split_seed,
        "alpaca": {"align (benign half)": align_benign, "initial state": state,
                   "benign evaluation (over-refusal)": benign_eval, "pool": pool_alpaca},
        "dolly_safety_related": {"pool": pool_dolly},
        "refusal_anchors": {"safety direction and gradmatch safe anchors": len(anchors)},
        "sizes": {name: sum(1 for _ in open(out / name, encoding="utf-8"))
                  for name in sorted(os.listdir(out)) if name.endswith(".jsonl")},
    }
    (run.results / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
    blocks = (align_benign, state, benign_eval, pool_alpaca)
    assert len(set().union(*blocks)) == sum(map(len, blocks)), "Alpaca blocks overlap"


def train(run: Run, data: str | Path, out: Path, training: Training, *extra: str) -> None:
    """train-adapter, resumed when an earlier run was cut off."""
    args = ["train-adapter", "--model", run.model, "--data", run.splits / data, "--out", out,
            "--max-length", run.recipe.max_length, *training.args(), "--no-progress", *extra]
    out.parent.mkdir(parents=True, exist_ok=True)
    if (out / "checkpoints").exists():
        args.append("--resume")
    elif out.exists():
        shutil.rmtree(out)         # a run that died before its first checkpoint
    sqsd(*args)


def trained(out: Path) -> bool:
    return (out / "train_summary.json").exists()


def evaluate(run: Run, name: str, prompts: str, *, model: str, adapter: Path | None = None,
             max_new_tokens: int | None = None, judge: str = "keywords") -> dict:
    """Greedy answers + verdicts into results/generations/NAME.jsonl; the summary."""
    out = run.results / "generations" / f"{name}.jsonl"
    summary = run.results / "generations" / f"{name}.summary.json"
    if not summary.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        args = ["evaluate", "--model", model, "--prompts", run.splits / prompts, "--out", out,
                "--summary", summary, "--max-new-tokens", max_new_tokens or run.recipe.max_new_tokens,
                "--judge", judge, "--batch-size", run.recipe.eval_batch_size, "--resume", "--no-progress"]
        if adapter is not None:
            args += ["--adapter", adapter]
        sqsd(*args)
    return json.loads(summary.read_text())


def read_summary(run: Run, name: str) -> dict:
    return json.loads((run.results / "generations" / f"{name}.summary.json").read_text())


# The alignment adapter is kept with the results (float32 LoRA, about 10 MB for SmolLM2):
# a new work directory merges it (seconds) instead of retraining (half an hour on the CPU),
# and merge-adapter gives train-adapter --merge-to's weights bit for bit.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "train_summary.json")


def stage_align(run: Run) -> None:
    aligned, kept = run.path("aligned"), run.results / "adapters" / "lora_align"
    if (kept / "adapter_model.safetensors").exists():
        run.stage("align (merge the kept adapter)", (aligned / "config.json").exists(), lambda: sqsd(
            "merge-adapter", "--model", run.model, "--adapter", kept, "--out", aligned, "--quiet"))
    else:
        run.stage("align", (aligned / "config.json").exists() and trained(run.path("lora_align")),
                  lambda: train(run, "align.jsonl", run.path("lora_align"), run.recipe.align,
                                "--merge-to", aligned))
        if trained(run.path("lora_align")):
            kept.mkdir(parents=True, exist_ok=True)
            for name in ADAPTER_FILES:
                shutil.copyfile(run.path("lora_align", name), kept / name)
    for name, prompts in (("base_harmful", "eval_harmful.jsonl"),
                          ("base_benign", "eval_benign.jsonl"),
                          ("aligned_harmful", "eval_harmful.jsonl"),
                          ("aligned_benign", "eval_benign.jsonl")):
        model = run.model if name.startswith("base") else str(aligned)
        run.stage(f"evaluate {name}",
                  (run.results / "generations" / f"{name}.summary.json").exists(),
                  lambda name=name, prompts=prompts, model=model:
                  evaluate(run, name, prompts, model=model))
    check_alignment_reproduced(run)
    refusal = read_summary(run, "aligned_harmful")["refusal_rate"]
    over = read_summary(run, "aligned_benign")["refusal_rate"]
    ok = refusal >= run.recipe.min_refusal and over <= run.recipe.max_over_refusal
    print(f"[validation] aligned base: refusal {refusal:.3f} (need >= {run.recipe.min_refusal}),"
          f" over-refusal {over:.3f} (need <= {run.recipe.max_over_refusal})", flush=True)
    if not ok:
        raise SystemExit("[validation] the alignment check failed; see docs/VALIDATION.md. "
                         "Change the align recipe, delete the work directory's aligned/ and "
                         "lora_align/ and the results' adapters/lora_align/, and rerun.")


def check_alignment_reproduced(run: Run) -> None:
    """Whether a rebuilt aligned model is v1's. A new work directory rebuilds the alignment
    (merges the kept adapter, or retrains it), while the scores and windows that later
    stages read come from v1's model (committed results): its greedy answers to the harmful
    evaluation are compared, answer by answer, with v1's, and the count goes to
    results/align_reproductions.csv. A mismatch is reported there and in the log, not
    hidden; the run goes on (the windows stay v1's)."""
    aligned = run.path("aligned")
    marker = aligned / "reproduction.json"
    v1 = run.results / "generations" / "aligned_harmful.summary.json"
    if marker.exists() or not v1.exists():
        return
    if (aligned / "config.json").stat().st_mtime <= v1.stat().st_mtime:
        return                     # v1's answers came from this very model (a first run)
    check = run.path("align_check")
    check.mkdir(parents=True, exist_ok=True)
    settings = json.loads(v1.read_text())["settings"]
    run.stage("check the rebuilt alignment against v1's answers", False, lambda: sqsd(
        "evaluate", "--model", aligned, "--prompts", run.splits / "eval_harmful.jsonl",
        "--out", check / "aligned_harmful.jsonl", "--summary", check / "summary.json",
        "--max-new-tokens", settings["max_new_tokens"], "--batch-size", settings["batch_size"],
        "--judge", "keywords", "--resume", "--no-progress"))
    v1_answers = read_jsonl(run.results / "generations" / "aligned_harmful.jsonl")
    old = {r["index"]: r["response"] for r in v1_answers}
    new = {r["index"]: r["response"] for r in read_jsonl(check / "aligned_harmful.jsonl")}
    same = sum(old[i] == new.get(i) for i in old)
    row = {"checked": time.strftime("%Y-%m-%d %H:%M:%S"), "answers": len(old), "identical": same,
           "refusal_rate_v1": json.loads(v1.read_text())["refusal_rate"],
           "refusal_rate_now": json.loads((check / "summary.json").read_text())["refusal_rate"]}
    append_csv(run.results / "align_reproductions.csv", row)
    marker.write_text(json.dumps(row, indent=1) + "\n")
    print(f"[validation] rebuilt alignment: {same}/{len(old)} answers identical to v1's"
          + ("" if same == len(old) else " -- NOT v1's model; see align_reproductions.csv"), flush=True)


def align(run: Run) -> Run:
    """``run`` with v1's model, splits and aligned model in place (each stage cached)."""
    run.work.mkdir(parents=True, exist_ok=True)
    run.results.mkdir(parents=True, exist_ok=True)
    stage_model(run)
    run.stage("splits", (run.splits / "pool.jsonl").exists() and (run.results / "splits.json").exists(),
              lambda: stage_splits(run))
    stage_align(run)
    return run


def aligned_run(args) -> Run:
    """The run of ``round_parser``'s ``args`` with v1's model, splits and aligned model in place."""
    return align(round_run(args))
