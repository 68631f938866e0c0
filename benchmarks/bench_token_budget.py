"""Peak memory of SQSD scoring on SmolLM2 against the batching: sample counts and token budgets.

Each configuration runs in a fresh process (peak RSS is a process's high-water mark):
SmolLM2-135M-Instruct (fp32, CPU) with the demo's three adapters (`make demo` trains and
caches them), the first --samples Alpaca records of ../shared/data, scored with
``SQSDScorer.score(batch_size=..., max_tokens=...)``. One JSON line per configuration goes
to results/token_budget_smollm2.jsonl: peak RSS (``ru_maxrss``), RSS before
scoring, wall time, and the first sample's score (equal across configurations: batching
does not change scores).

Times are only comparable within one quiet run; the recorded run shared the machine with
the validation experiment (reported as measured, memory is what it is for).

    python benchmarks/bench_token_budget.py                      # the default sweep
    python benchmarks/bench_token_budget.py --one 1024 64        # one configuration
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paths import RESULTS_DIR

REPO = Path(__file__).resolve().parent.parent
OUT = RESULTS_DIR / "token_budget_smollm2.jsonl"
SWEEP = (("none", "1"), ("none", "8"), ("512", "64"), ("1024", "64"), ("2048", "64"))


def one(max_tokens: str, batch_size: str, n: int, data: str) -> dict:
    import torch
    torch.set_num_threads(1)
    from sqsd_fast import SQSDScorer
    from sqsd_fast.data import read_records, tokenize_records
    from sqsd_fast.models import fetch_smollm2, resolve_model
    from sqsd_fast.models.cache import cache_root

    model = resolve_model(fetch_smollm2())
    adapters = cache_root() / "demo" / "adapters"
    find = lambda name: glob.glob(str(adapters / f"{name}-*"))[0] + "/adapter"  # noqa: E731
    scorer = SQSDScorer.from_pretrained(model, danger_state=find("danger_state"),
                                        danger_direction=find("danger_direction"),
                                        safety_direction=find("safety"))
    alpaca = json.load(open(data))[:n]
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for a in alpaca:
            f.write(json.dumps({"instruction": a["instruction"], "context": a["input"],
                                "response": a["output"]}) + "\n")
    samples = tokenize_records(read_records(f.name), scorer.tokenizer, max_length=512)
    os.unlink(f.name)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.time()
    rows = scorer.score(samples, batch_size=None if batch_size == "none" else int(batch_size),
                        max_tokens=None if max_tokens == "none" else int(max_tokens),
                        progress=False)
    return {"max_tokens": None if max_tokens == "none" else int(max_tokens),
            "batch_size": None if batch_size == "none" else int(batch_size),
            "tokens": sum(s.n_tokens for s in samples), "longest": max(s.n_tokens for s in samples),
            "seconds": round(time.time() - started, 1), "rss_before_gb": round(before / 1e6, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            "first": rows[0]["sqsd"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("MAX_TOKENS", "BATCH_SIZE"),
                        help="run one configuration in this process and print its JSON line")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "alpaca_5000.json"))
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(*args.one, args.samples, args.data)), flush=True)
        return 0
    for max_tokens, batch_size in SWEEP:
        result = subprocess.run([sys.executable, __file__, "--one", max_tokens, batch_size,
                                 "--samples", str(args.samples), "--data", args.data],
                                capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            return 1
        line = result.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        with open(OUT, "a") as f:
            f.write(json.dumps({**json.loads(line), "date_utc": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "threads": 1}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
