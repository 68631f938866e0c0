"""End-to-end scoring throughput and peak memory: one (state, direction) projection.

Over the same samples, in one run:
  (a) authors   the authors' algorithm (benchmarks/authors_algorithm.py: batch 1, one
                backward per sample, dense dW_m and D_m per module, cosines summed);
  (b) engine    our engine (SQSDScorer / ProjectionEngine) with backend="reference";
  (c) engine    our engine with its fastest available backend at its best batch size
                (a sweep over --batch-sizes x fast backends picks it);
  (d) floor     plain forward + backward of the same length-bucketed batches, same model
                and LoRA, no hooks (benchmarks/_model_setup.py: floor_pass).
(a), (b) and every (c) configuration must agree on every sample's summed cosine within
--tol before any time is printed or written. Final timings interleave the four methods
(a b c d a b c d ...) --repeats times and report medians, so slow drifts of a shared
machine hit all of them alike.

Goals (reported, not asserted): engine <= 1.10x the floor's time, >= 1.4x the authors'
throughput, peak memory within 10% of the floor's.

    python benchmarks/bench_e2e.py                     # CPU, Llama 512/1536/4 layers, 256 alpaca samples
    python benchmarks/bench_e2e.py --preset gpu-0.5b   # ~0.5B Qwen2-style, bf16, cuda
    python benchmarks/bench_e2e.py --smoke
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from _model_setup import DIRECTION, STATE, add_model_args, build_setup, floor_pass  # noqa: E402
from authors_algorithm import authors_project  # noqa: E402
from common import base_parser, env_facts, measure_peak_memory, print_table, setup, write_results  # noqa: E402

SCRIPT = "bench_e2e"


def fast_backends(device) -> list[str]:
    from sqsd_fast.ops import backend_available

    order = ("triton", "cpp") if device.type == "cuda" else ("cpp",)
    return [b for b in order if backend_available(b, device)]


def make_methods(st):
    """Callables ``run(samples) -> (S,) float64 totals in input order`` (floor -> None)."""
    from sqsd_fast.data.batching import length_bucketed_batches
    from sqsd_fast.scoring.scorer import SQSDScorer

    scorers = {}

    def scorer(backend):
        if backend not in scorers:
            scorers[backend] = SQSDScorer.from_peft_model(
                st.model, danger_state=STATE, danger_direction=DIRECTION, backend=backend,
                tokenizer=st.tokenizer)
        return scorers[backend]

    def authors(samples):
        return authors_project(st.model, samples, state=STATE, direction=DIRECTION,
                               device=st.device).total("cosine")

    def engine(backend, batch_size):
        def run(samples):
            rows = scorer(backend).project(samples, state="danger_state", direction="danger",
                                           metric="cosine", batch_size=batch_size, progress=False)
            return torch.tensor([math.nan if r["proj"] is None else r["proj"] for r in rows],
                                dtype=torch.float64)
        return run

    def floor(batch_size):
        def run(samples):
            floor_pass(st, length_bucketed_batches(samples, batch_size))
        return run

    return authors, engine, floor


def max_abs_diff(x, ref) -> float:
    both_nan = torch.isnan(x) & torch.isnan(ref)
    diff = (x - ref).abs().masked_fill(both_nan, 0.0)
    return float(diff.max()) if diff.numel() else 0.0


def run_once(fn, samples, device, keep=False):
    mem = measure_peak_memory(lambda: fn(samples), device, keep_result=keep)
    return mem


def main(argv=None):
    parser = base_parser(__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--batch-sizes", default="8,16,32", help="engine/floor sweep")
    parser.add_argument("--sweep-samples", type=int, default=64,
                        help="the sweep that picks (c)'s batch size runs on the first N samples (0: all)")
    parser.add_argument("--reference-batch-size", type=int, default=None,
                        help="batch size of (b) (default: the best of the sweep)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed passes per method")
    parser.add_argument("--tol", type=float, default=None,
                        help="max |cosine sum difference| allowed (default 1e-4 fp32, 5e-2 bf16/fp16)")
    parser.add_argument("--skip-authors", action="store_true")
    args = parser.parse_args(argv)
    setup(args)
    if args.smoke:
        args.samples = min(args.samples, 8)
        args.batch_sizes, args.repeats = "2,4", 1
        args.max_length = min(args.max_length, 64)
    st = build_setup(args)
    device = st.device
    if args.device != device.type:
        args.device = device.type
    facts = env_facts(device)
    samples = st.samples
    n = len(samples)
    n_tokens = sum(s.n_tokens for s in samples)
    tol = args.tol if args.tol is not None else (1e-4 if st.dtype == torch.float32 else 5e-2)
    authors, engine, floor = make_methods(st)
    backends = fast_backends(device)
    note = "" if backends else "no fast backend available: (c) is missing"
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    warm = samples[: min(4, n)]
    print(f"{st.cfg['name']}: {st.n_params / 1e6:.1f}M params, {n} samples, {n_tokens} tokens "
          f"(mean {n_tokens / n:.0f}), data {st.data_name}, fast backends {backends or 'none'}", flush=True)

    # ---- sweep: fast engine and floor at every batch size (one pass each, after warm-up)
    sweep_samples = samples[: args.sweep_samples] if args.sweep_samples else samples
    sweep = {}  # (method, backend, bs) -> Memory
    for bs in batch_sizes:
        for backend in backends:
            fn = engine(backend, bs)
            fn(warm)
            sweep[("engine", backend, bs)] = run_once(fn, sweep_samples, device, keep=True)
        fn = floor(bs)
        fn(warm)
        sweep[("floor", "-", bs)] = run_once(fn, sweep_samples, device)
        print(f"  swept batch size {bs}", file=sys.stderr, flush=True)
    if backends:
        best_backend, best_bs = min(((b, bs) for b in backends for bs in batch_sizes),
                                    key=lambda k: sweep[("engine",) + k].seconds)
    else:
        best_backend, best_bs = None, max(batch_sizes)
    ref_bs = args.reference_batch_size or best_bs

    # ---- final: interleaved repeats of (a) (b) (c) (d)
    methods = []
    if not args.skip_authors:
        methods.append(("authors", "-", 1, authors))
    methods.append(("engine", "reference", ref_bs, engine("reference", ref_bs)))
    if best_backend:
        methods.append(("engine", best_backend, best_bs, engine(best_backend, best_bs)))
    methods.append(("floor", "-", best_bs, floor(best_bs)))
    for _, _, _, fn in methods:
        fn(warm)
    runs = {m[:3]: [] for m in methods}
    for rep in range(args.repeats):
        for key0, key1, key2, fn in methods:
            runs[(key0, key1, key2)].append(run_once(fn, samples, device, keep=(rep == 0)))
        print(f"  repeat {rep + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    # ---- agreement before any time is reported
    truth_key = ("authors", "-", 1) if not args.skip_authors else ("engine", "reference", ref_bs)
    truth = runs[truth_key][0].result
    checks = {}
    for key, mems in runs.items():
        if key[0] == "engine" and mems[0].result is not None:
            checks[key] = max_abs_diff(mems[0].result, truth)
    sweep_checks = {k: max_abs_diff(m.result, truth[: len(sweep_samples)])
                    for k, m in sweep.items() if k[0] == "engine"}
    for k, v in sweep_checks.items():
        checks[("sweep",) + k] = v
    bad = {k: v for k, v in checks.items() if not v <= tol}
    if bad:
        for k, v in bad.items():
            print(f"MISMATCH {k}: max |cosine sum diff| vs {truth_key[0]} = {v:.3g} > {tol:g}")
        print("no timings reported: the methods disagree")
        return 1

    floor_by_bs = {bs: sweep[("floor", "-", bs)] for bs in batch_sizes}
    final_time = {k: statistics.median(m.seconds for m in v) for k, v in runs.items()}
    final_mem = {k: max(v, key=lambda m: m.extra_bytes) for k, v in runs.items()}
    floor_key = ("floor", "-", best_bs)
    authors_time = final_time.get(("authors", "-", 1))
    common = dict(preset=st.cfg["name"], params_M=st.n_params / 1e6, samples=n, tokens=n_tokens,
                  data=st.data_name, dtype=str(st.dtype).removeprefix("torch."), tol=tol)

    sweep_tokens = sum(s.n_tokens for s in sweep_samples)

    def row(phase, key, seconds, mem, floor_s, floor_mem):
        method, backend, bs = key
        n_s, n_t = (len(sweep_samples), sweep_tokens) if phase == "sweep" else (n, n_tokens)
        r = {**facts, **common, "phase": phase, "method": method, "backend": backend, "batch_size": bs,
             "samples": n_s, "tokens": n_t,
             "time_s": seconds, "samples_per_s": n_s / seconds, "tokens_per_s": n_t / seconds,
             "x_floor_time": seconds / floor_s,
             "extra_peak_MB": mem.extra_bytes / 2**20, "peak_MB": mem.peak_bytes / 2**20,
             "x_floor_extra_mem": mem.extra_bytes / max(floor_mem.extra_bytes, 1),
             "x_floor_peak_mem": mem.peak_bytes / max(floor_mem.peak_bytes, 1),
             "mem_method": mem.method,
             "max_abs_diff": checks.get(("sweep",) + key if phase == "sweep" else key, float("nan")),
             "repeats": len(runs.get(key, [None])), "note": note}
        if authors_time and phase == "final":
            r["x_authors_throughput"] = authors_time / seconds
        return r

    sweep_rows = [row("sweep", k, m.seconds, m, floor_by_bs[k[2]].seconds, floor_by_bs[k[2]])
                  for k, m in sweep.items()]
    final_rows = [row("final", k, final_time[k], final_mem[k], final_time[floor_key], final_mem[floor_key])
                  for k in runs]
    cols = ["method", "backend", "batch_size", "time_s", "samples_per_s", "x_floor_time",
            "x_authors_throughput", "extra_peak_MB", "peak_MB", "x_floor_extra_mem", "max_abs_diff"]
    title = (f"{st.cfg['name']} {facts['device']} threads={facts['threads']}: {n} samples, "
             f"{n_tokens} tokens, agreement tol {tol:g} vs {truth_key[0]}")
    print_table(sweep_rows, cols, title=f"sweep (one pass each over the first {len(sweep_samples)} samples) - " + title)
    print_table(final_rows, cols, title=f"final (median of {args.repeats} interleaved passes) - " + title)
    fast_key = ("engine", best_backend, best_bs) if best_backend else None
    if fast_key:
        ft, fm = final_time[fast_key], final_mem[fast_key]
        fl_t, fl_m = final_time[floor_key], final_mem[floor_key]
        print(f"\ngoals: engine/floor time {ft / fl_t:.3f} (goal <= 1.10); "
              + (f"throughput vs authors {authors_time / ft:.2f}x (goal >= 1.4); " if authors_time else "")
              + f"peak RSS vs floor {fm.peak_bytes / fl_m.peak_bytes:.3f}, extra peak vs floor "
              f"{fm.extra_bytes / max(fl_m.extra_bytes, 1):.3f} (goal within 1.10)")
    write_results(args, SCRIPT, sweep_rows + final_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
