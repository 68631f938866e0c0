"""v1's controls: response length, and gradient matching's own windows."""
from __future__ import annotations

import json

from .finetunes import finetune_and_evaluate
from .run import Run, Training, append_csv, read_csv, read_jsonl, sqsd, write_jsonl, write_report
from .scores import keep_windows, score_file, window_file, windows_dir


# Pre-registered 2026-11-26, after the main result (docs/VALIDATION.md: S1's samples have
# short responses, 41 tokens against S5's 133, and gradient matching's top window beat
# S1), before any of these fine-tunes ran. Same frozen recipe, one seed each:
#   length-matched  for each S1 sample (highest SQSD first), the unused scored sample
#                   outside S1 with the closest response-token count (ties: the lower
#                   pool index): a window with S1's lengths but not its SQSD ranks;
#   shortest        the window-size scored samples with the fewest response tokens;
#   gradmatch S2..S5  gradient matching's own windows, placed like SQSD's (its S1 is
#                   the top window already fine-tuned), for its Spearman and gap.
# The criterion is in report_v1.CONTROL_CRITERION.


def response_lengths(run: Run) -> dict[int, int]:
    """Pool index -> response tokens, for the samples SQSD scored."""
    return {int(r["index"]): int(r["n_response_tokens"])
            for r in read_csv(score_file(run, "sqsd")) if r["status"] == "ok"}


def window_indices(run: Run, name: str, window: str) -> list[int]:
    """Pool indices of one window of `subsets` (from its subsets.json)."""
    listing = json.loads((windows_dir(run, name) / "subsets.json").read_text())
    return next(w["indices"] for w in listing["subsets"] if w["name"] == window)


def length_matched(lengths: dict[int, int], target: list[int]) -> list[int]:
    """For each index of ``target`` in order, the unused index outside it whose length is
    closest (ties: the lower index)."""
    free = sorted(i for i in lengths if i not in set(target))
    chosen = []
    for t in target:
        best = min(free, key=lambda i: (abs(lengths[i] - lengths[t]), i))
        free.remove(best)
        chosen.append(best)
    return chosen


def stage_control_windows(run: Run) -> None:
    r = run.recipe
    lengths = response_lengths(run)
    sqsd_s1 = window_indices(run, "sqsd", "S1")
    controls = {"length-matched": length_matched(lengths, sqsd_s1),
                "shortest": sorted(lengths, key=lambda i: (lengths[i], i))[: r.window]}
    pool = read_jsonl(run.splits / "pool.jsonl")
    for name, indices in controls.items():
        out = windows_dir(run, name)
        if not (out / "S1.jsonl").exists():
            write_jsonl(out / "S1.jsonl", [pool[i] for i in indices])
        dest = run.results / "windows" / f"{name}.json"
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(json.dumps({
                "how": name, "pool_indices": indices,
                "response_tokens": [lengths[i] for i in indices],
                "sqsd_s1_response_tokens": [lengths[i] for i in sqsd_s1]}, indent=1) + "\n")
    out = windows_dir(run, "gradmatch-windows")
    run.stage("windows gradmatch S1..S5", (out / "subsets.json").exists(), lambda: sqsd(
        "subsets", "--scores", score_file(run, "gradmatch"), "--data", run.splits / "pool.jsonl",
        "--out-dir", out, "--num", r.num_windows, "--window", r.window, "--column", "score"))
    keep_windows(run, "gradmatch-windows")


def stage_controls(run: Run, training: Training) -> None:
    r = run.recipe
    stage_control_windows(run)
    jobs = [("length-matched", "S1"), ("shortest", "S1")]
    jobs += [("gradmatch-windows", f"S{k}") for k in range(2, r.num_windows + 1)]
    table = run.results / "asr.csv"
    for name, window in jobs:
        label = f"{name}-{window}" if name == "gradmatch-windows" else name
        if label in {row["label"] for row in read_csv(table)}:
            continue
        result = {}
        run.stage(f"fine-tune + evaluate {label}", False, lambda: result.update(
            finetune_and_evaluate(run, label, window_file(run, name, window), training)))
        append_csv(table, {"label": label, "ranking": name, "window": window, **result})
        write_report(run)
