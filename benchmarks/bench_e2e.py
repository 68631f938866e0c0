"""End-to-end scoring throughput and peak memory: one (state, direction) projection.

Over the same samples, in one run:
  (a) authors   the authors' algorithm (benchmarks/authors_algorithm.py: batch 1, one
                backward per sample, dense dW_m and D_m per module, cosines summed);
  (b) engine    our engine (SQSDScorer / ProjectionEngine) with backend="reference"
                (--skip-reference leaves it out: float64 over 210 modules is slow);
  (c) engine    our engine with its fastest available backend at its best batching
                (a sweep picks it: --batch-sizes, or with --max-tokens-list token budgets
                under a batch-size cap of --token-batch-cap);
  (e) default   our engine exactly as `sqsd-fast score` runs it by default (batch size 8,
                the device's default token budget: sqsd_fast.engine.token_budget);
  (d) floor     plain forward + backward of the same length-bucketed batches, same model
                and LoRA, no hooks (benchmarks/_model_setup.py: floor_pass), at the best
                batching of the sweep.
(a), (b), (e) and every (c) configuration must agree on every sample's summed cosine
within --tol before any time is printed or written. Final timings interleave the methods
(a b c e d a b c e d ...) --repeats times and report medians, so slow drifts of a shared
machine hit all of them alike. Peak memory is the process's RSS high-water mark during
each call (CPU) or the allocator's peak (CUDA), model included.

Goals (reported, not asserted): engine <= 1.10x the floor's time, >= 1.4x the authors'
throughput, peak memory within 10% of the floor's; and on SmolLM2 (issue #10), the
defaults >= 1.5x the authors' throughput, peak RSS <= 1.5x the authors', time <= 1.10x
the best floor.

    python benchmarks/bench_e2e.py                     # CPU, Llama 512/1536/4 layers, 256 alpaca samples
    python benchmarks/bench_e2e.py --preset smollm2    # the real model, token budgets
    python benchmarks/bench_e2e.py --preset gpu-0.5b   # ~0.5B Qwen2-style, bf16, cuda
    python benchmarks/bench_e2e.py --smoke
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from _model_setup import DIRECTION, STATE, add_model_args, build_setup, floor_pass  # noqa: E402
from authors_algorithm import authors_project  # noqa: E402
from common import base_parser, env_facts, measure_peak_memory, print_table, setup, write_results  # noqa: E402
from make_report import e2e_goals  # noqa: E402

SCRIPT = "bench_e2e"


def fast_backends(device) -> list[str]:
    from sqsd_fast.ops import backend_available

    order = ("triton", "cpp") if device.type == "cuda" else ("cpp",)
    return [b for b in order if backend_available(b, device)]


@dataclass(frozen=True)
class Batching:
    """How samples are grouped into passes: at most batch_size samples and max_tokens
    padded tokens (None: no budget)."""
    batch_size: int
    max_tokens: int | None = None

    @property
    def label(self) -> str:
        return f"{self.batch_size}" + (f"/{self.max_tokens}tok" if self.max_tokens else "")


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

    def engine(backend, batching: Batching):
        def run(samples):
            rows = scorer(backend).project(samples, state="danger_state", direction="danger",
                                           metric="cosine", batch_size=batching.batch_size,
                                           max_tokens=batching.max_tokens, progress=False)
            return torch.tensor([math.nan if r["proj"] is None else r["proj"] for r in rows],
                                dtype=torch.float64)
        return run

    def floor(batching: Batching):
        def run(samples):
            floor_pass(st, length_bucketed_batches(samples, batching.batch_size, batching.max_tokens))
        return run

    return authors, engine, floor


def default_batching(st) -> Batching:
    """What `sqsd-fast score` uses when neither --batch-size nor --max-tokens is given."""
    import dataclasses

    from sqsd_fast.options import ScoreOptions
    from sqsd_fast.engine.token_budget import resolve_max_tokens

    batch_size = next(f.default for f in dataclasses.fields(ScoreOptions) if f.name == "batch_size")
    return Batching(batch_size, resolve_max_tokens(None, st.model, st.device, st.samples))


def max_abs_diff(x, ref) -> float:
    both_nan = torch.isnan(x) & torch.isnan(ref)
    diff = (x - ref).abs().masked_fill(both_nan, 0.0)
    return float(diff.max()) if diff.numel() else 0.0


def sweep_batchings(args, st) -> list[Batching]:
    if args.max_tokens_list:
        longest = max(s.n_tokens for s in st.samples)
        budgets = [int(t) for t in args.max_tokens_list.split(",")]
        kept = [t for t in budgets if t >= longest]
        if not kept:
            raise SystemExit(f"--max-tokens-list {args.max_tokens_list}: every budget is below the "
                             f"longest sample ({longest} tokens); give budgets >= {longest}")
        return [Batching(args.token_batch_cap, t) for t in kept]
    return [Batching(int(b)) for b in args.batch_sizes.split(",")]


def parse_args(argv):
    """The shared options, the model's and the sweep's; the preset's and --smoke's defaults filled in."""
    parser = base_parser(__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--batch-sizes", default="8,16,32", help="engine/floor sweep (samples per pass)")
    parser.add_argument("--max-tokens-list", default=None,
                        help="sweep token budgets instead, e.g. 256,512,1024,2048 (default for "
                             "--preset smollm2); budgets below the longest sample are dropped")
    parser.add_argument("--token-batch-cap", type=int, default=64,
                        help="batch-size cap under a token budget of the sweep")
    parser.add_argument("--sweep-samples", type=int, default=64,
                        help="the sweep that picks (c)'s batching runs on the first N samples (0: all)")
    parser.add_argument("--reference-batch-size", type=int, default=None,
                        help="batch size of (b) (default: the best of the sweep)")
    parser.add_argument("--skip-reference", action="store_true", help="leave out (b)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed passes per method")
    parser.add_argument("--tol", type=float, default=None,
                        help="max |cosine sum difference| allowed (default 1e-4 fp32, 5e-2 bf16/fp16)")
    parser.add_argument("--skip-authors", action="store_true")
    args = parser.parse_args(argv)
    setup(args)
    if args.preset == "smollm2" and args.max_tokens_list is None:
        args.max_tokens_list = "256,512,1024,2048"
    if args.smoke:
        args.samples = min(args.samples, 8)
        args.batch_sizes, args.repeats = "2,4", 1
        args.max_length = min(args.max_length, 64)
    return args


def run_sweep(engine, floor, backends, batchings, warm, sweep_samples, device) -> dict:
    """One measured pass (after a warm-up) of the fast engine, per fast backend, and of the floor
    at every batching: ``{(method, backend, Batching): Memory}``; engine results are kept for the
    agreement check."""
    sweep = {}  # (method, backend, Batching) -> Memory
    for bt in batchings:
        for backend in backends:
            fn = engine(backend, bt)
            fn(warm)
            sweep[("engine", backend, bt)] = measure_peak_memory(lambda: fn(sweep_samples), device,
                                                                 keep_result=True)
        fn = floor(bt)
        fn(warm)
        sweep[("floor", "-", bt)] = measure_peak_memory(lambda: fn(sweep_samples), device)
        print(f"  swept batching {bt.label}", file=sys.stderr, flush=True)
    return sweep


def best_of_sweep(sweep, backends, batchings):
    """``(best_floor, best_backend, best)``: the floor's fastest batching and the engine's fastest
    (backend, batching); without a fast backend (None, the last batching)."""
    best_floor = min(batchings, key=lambda bt: sweep[("floor", "-", bt)].seconds)
    if backends:
        best_backend, best = min(((b, bt) for b in backends for bt in batchings),
                                 key=lambda k: sweep[("engine",) + k].seconds)
    else:
        best_backend, best = None, batchings[-1]
    return best_floor, best_backend, best


def final_methods(args, authors, engine, floor, *, best_backend, best, defaults, best_floor) -> list:
    """``(method, backend, Batching, run)`` of (a), (b), (c), (e), (d) in the order they are timed,
    less those the options leave out."""
    ref_bt = Batching(args.reference_batch_size) if args.reference_batch_size else best
    fast_or_ref = best_backend or "reference"
    methods = []
    if not args.skip_authors:
        methods.append(("authors", "-", Batching(1), authors))
    if not args.skip_reference:
        methods.append(("engine", "reference", ref_bt, engine("reference", ref_bt)))
    if best_backend:
        methods.append(("engine", best_backend, best, engine(best_backend, best)))
    methods.append(("default", fast_or_ref, defaults, engine(fast_or_ref, defaults)))
    methods.append(("floor", "-", best_floor, floor(best_floor)))
    return methods


def interleaved_runs(methods, warm, samples, repeats, device) -> dict:
    """``{(method, backend, Batching): [Memory per repeat]}``, the methods timed in turn (a b c e d
    a b c e d ...) so that slow drifts of a shared machine hit all of them alike; the first repeat
    keeps each result for the agreement check."""
    for _, _, _, fn in methods:
        fn(warm)
    runs = {m[:3]: [] for m in methods}
    for rep in range(repeats):
        for key0, key1, key2, fn in methods:
            runs[(key0, key1, key2)].append(
                measure_peak_memory(lambda: fn(samples), device, keep_result=(rep == 0)))
        print(f"  repeat {rep + 1}/{repeats} done", file=sys.stderr, flush=True)
    return runs


def agreement(runs, sweep, n_sweep_samples):
    """``(truth_key, checks)``: the run every other is checked against (the authors' or the
    reference's) and each run's, and each swept engine pass's, max |cosine sum difference| from it."""
    truth_key = next((k for k in runs if k[0] == "authors" or k[1] == "reference"), None)
    if truth_key is None:
        raise SystemExit("nothing to check agreement against: drop --skip-authors or --skip-reference")
    truth = runs[truth_key][0].result
    checks = {key: max_abs_diff(mems[0].result, truth)
              for key, mems in runs.items() if mems[0].result is not None}
    for k, m in sweep.items():
        if k[0] == "engine":
            checks[("sweep",) + k] = max_abs_diff(m.result, truth[: n_sweep_samples])
    return truth_key, checks


def report_mismatches(checks, truth_key, tol) -> bool:
    """Prints every check beyond ``tol``; True when there is one (then no time may be reported)."""
    bad = {k: v for k, v in checks.items() if not v <= tol}
    if bad:
        for k, v in bad.items():
            print(f"MISMATCH {k}: max |cosine sum diff| vs {truth_key[0]} = {v:.3g} > {tol:g}")
        print("no timings reported: the methods disagree")
    return bool(bad)


@dataclass(frozen=True)
class RowMaker:
    """What every CSV row shares, and how one measurement becomes a row."""
    shared: dict          # the environment's facts, then the run's
    note: str
    checks: dict          # key (("sweep",) + key for the sweep) -> max |cosine sum difference|
    runs: dict            # key -> [Memory per repeat] of the final phase
    sizes: dict           # phase -> (samples, tokens) it covered
    authors_time: float | None
    authors_peak_bytes: int | None

    def row(self, phase, key, seconds, mem, floor_s, floor_mem) -> dict:
        method, backend, bt = key
        n_s, n_t = self.sizes[phase]
        r = {**self.shared, "phase": phase, "method": method, "backend": backend,
             "batch_size": bt.batch_size, "max_tokens": bt.max_tokens or "",
             "samples": n_s, "tokens": n_t,
             "time_s": seconds, "samples_per_s": n_s / seconds, "tokens_per_s": n_t / seconds,
             "x_floor_time": seconds / floor_s,
             "extra_peak_MB": mem.extra_bytes / 2**20, "peak_MB": mem.peak_bytes / 2**20,
             "x_floor_extra_mem": mem.extra_bytes / max(floor_mem.extra_bytes, 1),
             "x_floor_peak_mem": mem.peak_bytes / max(floor_mem.peak_bytes, 1),
             "mem_method": mem.method,
             "max_abs_diff": self.checks.get(("sweep",) + key if phase == "sweep" else key, float("nan")),
             "repeats": len(self.runs.get(key, [None])), "note": self.note}
        if phase == "final" and self.authors_time:
            r["x_authors_throughput"] = self.authors_time / seconds
            r["x_authors_peak_mem"] = mem.peak_bytes / max(self.authors_peak_bytes, 1)
        return r


def print_results(sweep_rows, final_rows, *, title, n_sweep_samples, repeats, preset) -> None:
    """The sweep's and the final phase's tables, then the goals."""
    cols = ["method", "backend", "batch_size", "max_tokens", "time_s", "samples_per_s", "x_floor_time",
            "x_authors_throughput", "peak_MB", "x_authors_peak_mem", "extra_peak_MB", "x_floor_peak_mem",
            "max_abs_diff"]
    print_table(sweep_rows, [c for c in cols if "authors" not in c],
                title=f"sweep (one pass each over the first {n_sweep_samples} samples) - " + title)
    print_table(final_rows, cols, title=f"final (median of {repeats} interleaved passes) - " + title)
    print()
    for line in e2e_goals(final_rows, preset):
        print("goal: " + line)


def main(argv=None):
    args = parse_args(argv)
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
    note = "" if backends else "no fast backend available: (c) and (e) use the reference backend"
    batchings = sweep_batchings(args, st)
    defaults = default_batching(st)
    warm = samples[: min(4, n)]
    print(f"{st.cfg['name']}: {st.n_params / 1e6:.1f}M params, {n} samples, {n_tokens} tokens "
          f"(mean {n_tokens / n:.0f}, longest {max(s.n_tokens for s in samples)}), data {st.data_name}, "
          f"fast backends {backends or 'none'}, defaults batch {defaults.label}", flush=True)

    # ---- sweep: fast engine and floor at every batching (one pass each, after warm-up)
    sweep_samples = samples[: args.sweep_samples] if args.sweep_samples else samples
    sweep = run_sweep(engine, floor, backends, batchings, warm, sweep_samples, device)
    best_floor, best_backend, best = best_of_sweep(sweep, backends, batchings)

    # ---- final: interleaved repeats
    methods = final_methods(args, authors, engine, floor, best_backend=best_backend, best=best,
                            defaults=defaults, best_floor=best_floor)
    runs = interleaved_runs(methods, warm, samples, args.repeats, device)

    # ---- agreement before any time is reported
    truth_key, checks = agreement(runs, sweep, len(sweep_samples))
    if report_mismatches(checks, truth_key, tol):
        return 1

    final_time = {k: statistics.median(m.seconds for m in v) for k, v in runs.items()}
    final_mem = {k: max(v, key=lambda m: m.peak_bytes) for k, v in runs.items()}
    floor_key = ("floor", "-", best_floor)
    authors_key = ("authors", "-", Batching(1))
    common = dict(preset=st.cfg["name"], params_M=st.n_params / 1e6, samples=n, tokens=n_tokens,
                  data=st.data_name, dtype=str(st.dtype).removeprefix("torch."), tol=tol)
    rows = RowMaker(shared={**facts, **common}, note=note, checks=checks, runs=runs,
                    sizes={"sweep": (len(sweep_samples), sum(s.n_tokens for s in sweep_samples)),
                           "final": (n, n_tokens)},
                    authors_time=final_time.get(authors_key),
                    authors_peak_bytes=final_mem[authors_key].peak_bytes if authors_key in final_mem else None)
    sweep_rows = []
    for k, m in sweep.items():
        fl = sweep[("floor", "-", k[2])]
        sweep_rows.append(rows.row("sweep", k, m.seconds, m, fl.seconds, fl))
    final_rows = [rows.row("final", k, final_time[k], final_mem[k], final_time[floor_key], final_mem[floor_key])
                  for k in runs]
    title = (f"{st.cfg['name']} {facts['device']} threads={facts['threads']}: {n} samples, "
             f"{n_tokens} tokens, agreement tol {tol:g} vs {truth_key[0]}")
    print_results(sweep_rows, final_rows, title=title, n_sweep_samples=len(sweep_samples),
                  repeats=args.repeats, preset=st.cfg["name"])
    write_results(args, SCRIPT, sweep_rows + final_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
