"""v1's answers judged again by the content judge (post hoc, issue #17).

v1 (docs/VALIDATION.md) judged its 32-token answers with the GCG keyword judge only. This
command reads every generation file of v1 (``results/validation/generations``),
judges each answer with ``sqsd_fast.evaluation.content_judge`` and writes, per fine-tune,
the keyword ASR beside the content judge's verdict counts and ASR to
``v1_content_judge.csv``. It is a reading of answers that exist, not a new experiment:
the answers are cut at 32 tokens, one fine-tune per window, and the judge was written after
v1's results were known; the pre-registered test is v2 (preregistration_v2.md).

    python -m benchmarks.validation rejudge
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from sqsd_fast.evaluation.content_judge import VERDICTS, judge_answer

from ..paths import RESULTS_DIR

RESULTS = RESULTS_DIR / "validation"


def rejudge(results: Path = RESULTS) -> list[dict]:
    """One row per fine-tune of asr.csv, in its order."""
    rows = []
    with open(results / "asr.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    for run in runs:
        answers = [json.loads(line) for line in
                   (results / "generations" / f"ft_{run['label']}.jsonl").read_text().splitlines()]
        counts = dict.fromkeys(VERDICTS, 0)
        for a in answers:
            counts[judge_answer(a["prompt"], a["response"]).verdict] += 1
        n = len(answers)
        rows.append({"label": run["label"], "ranking": run["ranking"], "window": run["window"], "n": n,
                     "asr_keywords": round(float(run["asr"]), 4),
                     "asr_content": round(counts["compliance"] / n, 4),
                     **{f"n_{v}": k for v, k in counts.items()}})
    return rows


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    rows = rejudge()
    out = RESULTS / "v1_content_judge.csv"
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    width = max(len(r["label"]) for r in rows)
    print(f"{'fine-tune':<{width}}  ASR keywords  ASR content  refusal  degenerate  compliance")
    for r in rows:
        print(f"{r['label']:<{width}}  {r['asr_keywords']:>12.3f}  {r['asr_content']:>11.3f}  "
              f"{r['n_refusal']:>7}  {r['n_degenerate']:>10}  {r['n_compliance']:>10}")
    print(f"written: {out}")
    return 0
