"""Scoring a large data set: peak memory per 100k samples and the pipeline's own share of the time.

Generated instruction records (words of the toy corpus, prompts of 5-20 words, responses of
5-60 words, seeded) are scored by `sqsd_fast.app.pipeline.score_file`, as `sqsd-fast score`
does, each size in a fresh process (peak RSS is a process's high-water mark):
  toy      the toy model (hidden 64, 2 layers) and its three adapters: the model costs
           little, so what the pipeline itself costs (reading, tokenizing, batching,
           sidecars, ranking, writing) shows
  fake     no model at all (the test suite's stand-in scorer): the pipeline alone, so its
           memory per sample and its time show at any size in minutes
  smollm2  SmolLM2-135M-Instruct with a fresh LoRA state and the shipped anchors'
           directions (the zero-configuration default; --sizes 20000 as the issue asks)
Reported per size: peak RSS, RSS before scoring, the growth per 100k samples against the
smallest size, wall time, the time inside the scorer's batches (forward, backward and
reductions: what is not the pipeline's), the model loading time, and the pipeline's own
share = (wall - scorer - loading) / wall. Goals (issue #29, reported, not asserted): a
small RSS growth per 100k samples, the pipeline's own share under 5%.

    python benchmarks/bench_large_data.py                          # toy, 10k and 100k
    python benchmarks/bench_large_data.py --model fake --sizes 10000,100000
    python benchmarks/bench_large_data.py --model smollm2 --sizes 20000
    python benchmarks/bench_large_data.py --smoke
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]

from paths import RESULTS_DIR  # noqa: E402

RESULTS = RESULTS_DIR / "large_data.jsonl"


def write_records(path: Path, n: int, seed: int = 0) -> None:
    from sqsd_fast.testing.toy_model import TOY_CORPUS
    words = " ".join(TOY_CORPUS).split()
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for _ in range(n):
            prompt = " ".join(rng.choices(words, k=rng.randint(5, 20)))
            response = " ".join(rng.choices(words, k=rng.randint(5, 60)))
            handle.write(json.dumps({"instruction": prompt, "response": response}) + "\n")


def one_run(model: str, n: int, work: Path) -> dict:
    """Score n generated records in this process; the measurements."""
    from common import _read_status_kb   # /proc/self/status, in kB

    from sqsd_fast.app import pipeline
    data = work / f"data_{n}.jsonl"
    write_records(data, n)
    if model == "fake":   # the pipeline alone: the test suite's stand-in scorer, no model
        from sqsd_fast.testing.fake_scorer import FakeScorer, make_workspace
        workspace = make_workspace(work / f"fake_{n}", records=[])
        kwargs = dict(model=str(workspace["model"]), danger_state=str(workspace["danger_state"]),
                      danger_direction=str(workspace["danger_direction"]), safety_direction=str(workspace["safety"]))
        pipeline.load_scorer = lambda options: FakeScorer()
    elif model == "toy":
        from sqsd_fast.testing.toy_model import build_toy_assets
        assets = build_toy_assets(work / "toy")
        kwargs = dict(model=str(assets.model_dir), danger_state=str(assets.danger_state),
                      danger_direction=str(assets.danger_direction), safety_direction=str(assets.safety_direction))
    else:
        kwargs = dict(model=model)
    timing = {"scorer_s": 0.0, "load_s": 0.0}
    real_load, real_iterate = pipeline.load_scorer, pipeline._iterate

    def timed_load(options):
        start = time.perf_counter()
        try:
            return real_load(options)
        finally:
            timing["load_s"] += time.perf_counter() - start

    def timed_iterate(*args, **kwargs):
        batches = iter(real_iterate(*args, **kwargs))
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                timing["scorer_s"] += time.perf_counter() - start
                return
            timing["scorer_s"] += time.perf_counter() - start
            yield batch

    pipeline.load_scorer, pipeline._iterate = timed_load, timed_iterate
    rss_before = _read_status_kb("VmRSS") / 1024
    start = time.perf_counter()
    result = pipeline.score_file(**kwargs, data=str(data), out=str(work / f"scores_{n}.jsonl"), quiet=True)
    wall = time.perf_counter() - start
    own = wall - timing["scorer_s"] - timing["load_s"]
    return {"model": model, "samples": n, "scored": sum(r["status"] == "ok" for r in result.rows),
            "peak_rss_mb": round(_read_status_kb("VmHWM") / 1024, 1), "rss_before_mb": round(rss_before, 1),
            "wall_s": round(wall, 2), "scorer_s": round(timing["scorer_s"], 2), "load_s": round(timing["load_s"], 2),
            "pipeline_own_s": round(own, 2), "pipeline_own_share": round(own / wall, 4),
            "tokens": sum(r["n_tokens"] for r in result.rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy", help="toy, fake, or a model for --model (e.g. smollm2)")
    parser.add_argument("--sizes", default=None, help="comma list of record counts (default 10000,100000)")
    parser.add_argument("--smoke", action="store_true", help="200 and 400 records: checks the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON lines appended here")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_run(args.model, args.one, args.work)))
        return 0
    sizes = [200, 400] if args.smoke else [int(s) for s in (args.sizes or "10000,100000").split(",")]
    rows = []
    from common import env_facts
    import torch
    facts = env_facts(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as work:
        for n in sizes:
            done = subprocess.run([sys.executable, __file__, "--model", args.model, "--one", str(n),
                                   "--work", work], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{n} records failed:\n{done.stderr[-3000:]}")
            rows.append({**json.loads(done.stdout.strip().splitlines()[-1]), "mode": "smoke" if args.smoke else "full"})
    base = rows[0]
    print(f"{'samples':>8} {'peak RSS MB':>11} {'before MB':>9} {'MB/100k':>8} {'wall s':>8} {'scorer s':>8} "
          f"{'load s':>7} {'own share':>9}")
    for row in rows:
        growth = ((row["peak_rss_mb"] - base["peak_rss_mb"]) / (row["samples"] - base["samples"]) * 1e5
                  if row is not base else float("nan"))
        row["rss_growth_mb_per_100k"] = round(growth, 1) if row is not base else None
        print(f"{row['samples']:>8} {row['peak_rss_mb']:>11.0f} {row['rss_before_mb']:>9.0f} {growth:>8.0f} "
              f"{row['wall_s']:>8.1f} {row['scorer_s']:>8.1f} {row['load_s']:>7.1f} {row['pipeline_own_share']:>9.2%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as handle:
        for row in rows:
            handle.write(json.dumps({**facts, **row}) + "\n")
    print(f"appended {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
