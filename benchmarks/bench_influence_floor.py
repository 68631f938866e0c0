"""Influence at the floor: GradientStats' passes against a plain forward + backward, bergson beside.

Issue #29 part 4. SmolLM2-135M-Instruct, float32, seeded random LoRA r 8 (alpha 16) on all
210 linear projections; the first --samples Alpaca records are the training samples, the
next --queries the query set. Every method works on the same length-bucketed batches
(GradientStats' defaults: 8 samples, the device's token budget):

  floor       forward + backward of those batches, no hooks (_model_setup.floor_pass): what one
              fine-tuning step over the same data costs, the least any per-sample method can
  query       GradientStats.query_scores(train, q): per-sample dot and global cosine with the
              query set's mean LoRA gradient q (taken once before the timing, --queries samples)
  self_stats  GradientStats.self_stats(train): per-sample squared gradient norms
  sketch      GradientStats.sketch(train, size=--sketch): Kronecker sketches (2 k1 k2 per module)

The methods run --repeats times interleaved (floor, query, self_stats, sketch, floor, ...)
in one process after a warm-up on a few samples, so a change in the machine's load hits all
of them alike; time = the median, extra peak = the largest RSS high-water mark over what was
resident before the call, peak RSS = the process's high-water mark during the call
(benchmarks/common.py; bergson's: the larger of its two processes').

--paired runs the four passes side by side instead, one batch of each in turn (order
rotating), so that load drifts cancel in the ratios; x floor then comes with a bootstrap
95% interval over the batches (run_paired).

bergson (--bergson-python, the python of a separate venv with bergson installed; see
benchmarks/peers/bergson_query.py) runs the same data, model and LoRA state as a query-scoring
job: ``bergson build`` of the query set's mean gradient, then ``bergson score
--unit_normalize`` of the training set against it, each a CLI process timed whole (so its
times include starting Python and loading the model, ~10 s, which ours do not). bergson
2.5.1's default is no projection (exact LoRA gradients); the per-sample scores come back
for the agreement (Spearman of its scores with our exact query cosines).

Goals (issue #29 part 4): query, self_stats and sketch <= 1.10x the floor's time; >= 1.5x
bergson's throughput at lower memory. Rows: results/influence_floor.jsonl; a table.

    python benchmarks/bench_influence_floor.py [--repeats 2] [--bergson-python /path/venv/bin/python]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from _model_setup import STATE, floor_pass, floor_steps, load_rows, load_smollm2_lora  # noqa: E402
from common import _release_free_heap, env_facts, measure_peak_memory  # noqa: E402
from paths import RESULTS_DIR  # noqa: E402
from validation.report_common import spearman  # noqa: E402

OUT = RESULTS_DIR / "influence_floor.jsonl"
ALPACA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "alpaca_5000.json"
METHODS = ("floor", "query", "self_stats", "sketch")
END = object()


class FloorSetup:
    """What ``floor_pass`` reads: the model, its tokenizer, the device and the compute dtype."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.device, self.dtype = torch.device("cpu"), torch.float32


def method_calls(stats, train, q, sketch_size):
    """``{method: callable}``; the floor walks the very batches GradientStats makes."""
    floor_setup = FloorSetup(stats.model, stats.tokenizer)
    return {
        "floor": lambda: floor_pass(floor_setup, stats._batches(train, None, False, None)),
        "query": lambda: stats.query_scores(train, q),
        "self_stats": lambda: stats.self_stats(train),
        "sketch": lambda: stats.sketch(train, size=sketch_size),
    }


def run_ours(args, train, queries, model, tok) -> tuple[list[dict], torch.Tensor]:
    from sqsd_fast.influence import GradientStats

    stats = GradientStats(model, adapter=STATE, tokenizer=tok)
    started = time.perf_counter()
    q = stats.query_gradient(queries)
    query_gradient_s = time.perf_counter() - started
    calls = method_calls(stats, train, q, args.sketch)
    warm = method_calls(stats, train[:2 if args.smoke else 8], q, args.sketch)
    for fn in warm.values():
        fn()
    seconds = {m: [] for m in METHODS}
    extra = {m: 0 for m in METHODS}
    peak = {m: 0 for m in METHODS}
    cosines = None
    for repeat in range(args.repeats):
        for method in METHODS:
            mem = measure_peak_memory(calls[method], torch.device("cpu"), keep_result=method == "query")
            seconds[method].append(mem.seconds)
            extra[method] = max(extra[method], mem.extra_bytes)
            peak[method] = max(peak[method], mem.peak_bytes)
            if method == "query":
                cosines = mem.result.query_cosine[:, 0].clone()
            print(f"  repeat {repeat + 1}/{args.repeats} {method}: {mem.seconds:.1f} s, "
                  f"extra peak {mem.extra_bytes / 2**20:,.0f} MB", flush=True)
    floor_s = statistics.median(seconds["floor"])
    n_tokens = sum(s.n_tokens for s in train)
    rows = []
    for method in METHODS:
        median = statistics.median(seconds[method])
        rows.append({"method": method, "samples": len(train), "tokens": n_tokens, "seconds": round(median, 2),
                     "all_seconds": [round(s, 2) for s in seconds[method]],
                     "samples_per_s": round(len(train) / median, 3), "x_floor": round(median / floor_s, 3),
                     "extra_peak_mb": round(extra[method] / 2**20, 1), "peak_rss_mb": round(peak[method] / 2**20, 1),
                     "sketch_size": list(args.sketch) if method == "sketch" else None,
                     "query_gradient_s": round(query_gradient_s, 2) if method == "query" else None})
    return rows, cosines


def batch_steps(stats, train, q, sketch_size) -> dict:
    """``{method: iterator}``: each ``next`` does one more batch of the method's whole pass,
    the very calls ``method_calls`` makes (setup paid once, on the first step)."""
    floor_setup = FloorSetup(stats.model, stats.tokenizer)
    return {"floor": floor_steps(floor_setup, stats._batches(train, None, False, None)),
            "query": stats.iter_compute(train, queries=q),
            "self_stats": stats.iter_compute(train),
            "sketch": stats.iter_compute(train, sketch_size=sketch_size)}


def run_paired(args, train, queries, model, tok) -> list[dict]:
    """The four whole passes side by side, one batch of each in turn.

    Whole passes minutes apart see different machine load (their ratios to the floor moved
    by +-5% between two runs on a 2-core host). Here the four passes advance together: each
    batch is done by all four within seconds, in an order that rotates from batch to batch,
    so slow drifts in load hit all four alike and cancel in the ratio. x floor = a method's
    summed batch times / the floor's; its 95% interval resamples the batches (bootstrap).
    Peak RSS is the process's: the four passes are alive at once, so it is not a pass's.
    """
    from sqsd_fast.influence import GradientStats

    stats = GradientStats(model, adapter=STATE, tokenizer=tok)
    q = stats.query_gradient(queries)
    n_batches = sum(1 for _ in stats._batches(train, None, False, None))
    for fn in method_calls(stats, train[:2 if args.smoke else 8], q, args.sketch).values():
        fn()                                            # warm-up, as in the whole-pass mode
    seconds = {m: torch.zeros(n_batches, dtype=torch.float64) for m in METHODS}
    for repeat in range(args.repeats):
        steps = batch_steps(stats, train, q, args.sketch)
        for b in range(n_batches):
            shift = (b + repeat) % len(METHODS)
            for method in METHODS[shift:] + METHODS[:shift]:
                started = time.perf_counter()
                next(steps[method])
                seconds[method][b] += time.perf_counter() - started
        for method, rest in steps.items():      # each pass's end (the floor's zero_grad)
            if next(rest, END) is not END:
                raise RuntimeError(f"{method} made more batches than the floor")
        print(f"  round {repeat + 1}/{args.repeats}: " +
              ", ".join(f"{m} {seconds[m].sum().item():.1f} s" for m in METHODS), flush=True)
    resample = torch.randint(n_batches, (2000, n_batches), generator=torch.Generator().manual_seed(0))
    floor_s = seconds["floor"].sum().item()
    n_tokens = sum(s.n_tokens for s in train)
    rows = []
    for method in METHODS:
        ratios = seconds[method][resample].sum(1) / seconds["floor"][resample].sum(1)
        low, high = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        method_s = seconds[method].sum().item()
        rows.append({"method": method, "mode": "paired by batch", "samples": len(train), "tokens": n_tokens,
                     "batches": n_batches, "repeats": args.repeats, "seconds": round(method_s / args.repeats, 2),
                     "samples_per_s": round(len(train) * args.repeats / method_s, 3),
                     "x_floor": round(method_s / floor_s, 3), "x_floor_ci95": [round(low, 3), round(high, 3)],
                     "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                     "sketch_size": list(args.sketch) if method == "sketch" else None})
    return rows


def run_bergson(args, model_dir: str, adapter_dir: Path, train_rows, query_rows, work: Path) -> dict:
    """bergson in its own venv and process (benchmarks/peers/bergson_query.py)."""
    script = Path(__file__).resolve().parent / "peers" / "bergson_query.py"
    for name, rows in (("train", train_rows), ("query", query_rows)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = subprocess.run([args.bergson_python, str(script), "--model", model_dir, "--adapter", str(adapter_dir),
                           "--train", str(work / "train.jsonl"), "--query", str(work / "query.jsonl"),
                           "--work", str(work / "bergson")], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bergson run failed (rc {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sketch", type=lambda s: tuple(int(v) for v in s.split(",")), default=(8, 16),
                        help="k1,k2 of the Kronecker sketch (default 8,16: 256 numbers a module)")
    parser.add_argument("--data", default=str(ALPACA))
    parser.add_argument("--bergson-python", default=None,
                        help="python of a venv with bergson installed (not a dependency of this project)")
    parser.add_argument("--skip-ours", action="store_true", help="bergson only (its rows, no agreement)")
    parser.add_argument("--paired", action="store_true",
                        help="time the four methods back to back on each batch (ratios with a 95%% interval)")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=OUT, help="JSON lines file the rows are appended to")
    parser.add_argument("--smoke", action="store_true", help="8 samples, 1 repeat: checks the script runs")
    args = parser.parse_args(argv)
    if args.paired and args.bergson_python:
        parser.error("--paired times our methods only; run bergson without it")
    if args.smoke:
        args.samples, args.repeats = 8, 1

    from sqsd_fast.data import read_records, tokenize_records

    facts = env_facts(torch.device("cpu"))
    model, tok, model_dir = load_smollm2_lora((STATE,))
    rows_in, _ = load_rows(args.data, args.samples + args.queries)
    samples = tokenize_records(read_records(rows_in), tok, max_length=512)
    train, queries = samples[:args.samples], samples[args.samples:]
    work = Path(tempfile.mkdtemp(prefix="bench_influence_bergson_")) if args.bergson_python else None
    if work is not None:      # the state bergson reads, saved before our passes
        model.save_pretrained(work / "state", selected_adapters=[STATE])
    if args.paired:
        rows, cosines = run_paired(args, train, queries, model, tok), None
    else:
        rows, cosines = ([], None) if args.skip_ours else run_ours(args, train, queries, model, tok)

    if work is not None:
        del model, tok, samples, train, queries      # bergson runs beside this process: give the memory back
        _release_free_heap()
        adapter_dir = work / "state" / STATE if (work / "state" / STATE).exists() else work / "state"
        theirs = run_bergson(args, model_dir, adapter_dir, rows_in[:args.samples], rows_in[args.samples:], work)
        row = {"method": "bergson", "samples": args.samples, "seconds": theirs["score_s"],
               "build_query_s": theirs["build_s"], "samples_per_s": round(args.samples / theirs["score_s"], 3),
               "peak_rss_mb": theirs["peak_rss_mb"], "bergson": theirs["version"],
               "projection_dim": theirs.get("projection_dim"), "timed": "whole CLI processes (start, model load)"}
        if cosines is not None:
            row["spearman_with_our_cosine"] = round(spearman(cosines.tolist(), theirs["scores"]), 4)
        floor = next((r for r in rows if r["method"] == "floor"), None)
        if floor:
            row["x_floor"] = round(theirs["score_s"] / floor["seconds"], 3)
        rows.append(row)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        for r in rows:
            f.write(json.dumps({**facts, **r, "process_peak_rss_mb": round(peak, 1), "note": args.note,
                                "smoke": args.smoke, "omp_threads": os.environ.get("OMP_NUM_THREADS", "")}) + "\n")
    print(f"\n{'method':<11} {'seconds':>8} {'samples/s':>10} {'x floor':>8} {'peak RSS MB':>12} "
          f"{'extra peak MB':>14} {'Spearman':>9} {'x floor 95%':>14}")
    for r in rows:
        interval = "{:.3f}-{:.3f}".format(*r["x_floor_ci95"]) if "x_floor_ci95" in r else ""
        print(f"{r['method']:<11} {r['seconds']:>8} {r['samples_per_s']:>10} {r.get('x_floor', ''):>8} "
              f"{r['peak_rss_mb']:>12} {r.get('extra_peak_mb', ''):>14} {r.get('spearman_with_our_cosine', ''):>9}"
              f" {interval:>14}")
    print(f"process peak RSS {peak:,.0f} MB; rows appended to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
