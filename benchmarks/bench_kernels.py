"""``factor_grad_stats`` by backend vs the compute floor (docs/METHOD.md §4).

Cases
  lora_A   a=U (N, r), b=X (N, d), gram "left", K directions   (the lora_A statistic)
  lora_B   a=E (N, d), b=H (N, r), gram "right", K directions  (the lora_B statistic)
  full     a=E (N, p), b=X (N, q), gram "frobenius", no directions (a full linear layer)

Reported per backend: median time; ``x_floor`` = time / one ``torch.mm(a.T, b)`` over all
N rows (the floor: read a and b once and contract them; the faster of mm(a.T, b) and
mm(b.T, a), both shown; goal for cpp <= 1.5);
``x_ref`` = reference time / backend time (speed-up; goal >= 1 for lora, >= 5 for full);
achieved bandwidth (bytes of a and b / time) as a fraction of a measured large copy
(read + write bytes / time; goal on GPU >= 0.7); for "full", extra peak memory as a
fraction of the materialized per-sample gradients S*p*q*4 bytes (goal < 0.1). Outputs are
checked against the float64 reference before anything is timed; a backend that disagrees
is reported as such and not timed.
Every backend is called through the public op ``sqsd_fast.ops.factor_grad_stats(...,
backend=name)``, so input validation is part of what is timed, as users pay it.

    python benchmarks/bench_kernels.py            # CPU fp32 (or GPU bf16 when present)
    python benchmarks/bench_kernels.py --smoke    # seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from common import (base_parser, env_facts, measure_peak_memory, measure_time, print_table,  # noqa: E402
                    rel_err, setup, write_results)

from sqsd_fast.ops import backend_available, backend_unavailable_reason, factor_grad_stats  # noqa: E402
from sqsd_fast.ops.constants import BACKEND_NAMES  # noqa: E402
from sqsd_fast.ops.reference import factor_grad_stats_reference  # noqa: E402

SCRIPT = "bench_kernels"


def make_case(kind, *, S, t_lo, t_hi, r, d, K, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(t_lo, t_hi + 1, (S,), generator=g)
    cu = torch.zeros(S + 1, dtype=torch.int64)
    cu[1:] = torch.cumsum(lengths, 0)
    N = int(cu[-1])
    if kind == "lora_A":
        p, q, gram = r, d, "left"
    elif kind == "lora_B":
        p, q, gram = d, r, "right"
    elif kind == "full":
        p, q, gram = d, d, "frobenius"
    else:
        raise ValueError(kind)
    a = torch.randn(N, p, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(N, q, generator=g).to(device=device, dtype=dtype)
    dirs = None if K == 0 else torch.randn(K, p, q, generator=g).to(device=device, dtype=dtype)
    return dict(kind=kind, a=a, b=b, cu=cu.to(device), dirs=dirs, gram=gram, S=S, N=N, p=p, q=q, K=K)


def tolerance(dtype, device) -> float:
    if dtype == torch.float32:
        return 1e-5 if device.type == "cpu" else 1e-4
    return 1e-2


def measured_copy_bandwidth(device, nbytes=1 << 30) -> float:
    """Bytes/s of a large device-to-device copy (read + write counted)."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    t = measure_time(lambda: y.copy_(x), device, min_run_time=0.05 if nbytes < (1 << 26) else 0.5)
    return 2 * nbytes / t.median_s


def backend_fn(name: str):
    """``f(a, b, cu_seqlens, dirs, gram) -> (proj, stat)``: the public op on backend ``name``."""

    def call(a, b, cu_seqlens, dirs, gram):
        return factor_grad_stats(a, b, cu_seqlens, dirs=dirs, gram=gram, backend=name)

    return call


def run_case(case, backends, device, args, facts, copy_bw):
    a, b, cu, dirs, gram = case["a"], case["b"], case["cu"], case["dirs"], case["gram"]
    S, p, q = case["S"], case["p"], case["q"]
    ref_proj, ref_stat = factor_grad_stats_reference(a, b, cu, dirs, gram)
    # The floor: one product a^T b over all N rows (reads a and b once). Both layouts are
    # timed because BLAS speed differs a lot between them for these thin shapes; the
    # faster one is the floor every ratio refers to.
    floors = {"floor:mm(a.T,b)": measure_time(lambda: torch.mm(a.T, b), device, min_run_time=args.min_run_time),
              "floor:mm(b.T,a)": measure_time(lambda: torch.mm(b.T, a), device, min_run_time=args.min_run_time)}
    floor = min(floors.values(), key=lambda t: t.median_s)
    dtype_name = str(a.dtype).removeprefix("torch.")
    rows = [{
        **facts, "case": case["kind"], "backend": name, "dtype": dtype_name,
        "S": S, "N": case["N"], "p": p, "q": q, "K": case["K"], "gram": gram,
        "time_ms": t.median_ms, "iqr_ms": t.iqr_s * 1e3, "runs": t.runs,
        "x_floor": t.median_s / floor.median_s, "status": "ok",
    } for name, t in floors.items()]
    io_bytes = a.numel() * a.element_size() + b.numel() * b.element_size()
    dense_bytes = S * p * q * 4
    ref_time = None
    for name in backends:
        row = {**facts, "case": case["kind"], "backend": name, "dtype": rows[0]["dtype"], "S": S,
               "N": case["N"], "p": p, "q": q, "K": case["K"], "gram": gram}
        if not backend_available(name, device):
            row["status"] = f"unavailable: {backend_unavailable_reason(name, device)}"
            rows.append(row)
            continue
        fn = backend_fn(name)
        proj, stat = fn(a, b, cu, dirs, gram)
        err = rel_err(proj, ref_proj) if proj.numel() else 0.0
        if stat is not None or ref_stat is not None:
            err = max(err, rel_err(stat, ref_stat))
        row["rel_err"] = err
        tol = tolerance(a.dtype, device)
        if not err <= tol:
            row["status"] = f"MISMATCH rel_err {err:.3g} > {tol:g}; not timed"
            rows.append(row)
            continue
        del proj, stat
        t = measure_time(lambda: fn(a, b, cu, dirs, gram), device, min_run_time=args.min_run_time)
        row.update(time_ms=t.median_ms, iqr_ms=t.iqr_s * 1e3, runs=t.runs,
                   x_floor=t.median_s / floor.median_s, status="ok")
        if name == "reference":
            ref_time = t.median_s
        if ref_time is not None:
            row["x_ref"] = ref_time / t.median_s
        if copy_bw is not None:
            row["bw_GBps"] = io_bytes / t.median_s / 1e9
            row["bw_frac"] = io_bytes / t.median_s / copy_bw
        if case["kind"] == "full" or args.memory_all:
            mem = measure_peak_memory(lambda: fn(a, b, cu, dirs, gram), device)
            row.update(extra_peak_MB=mem.extra_bytes / 2**20, dense_grads_MB=dense_bytes / 2**20,
                       mem_frac_dense=mem.extra_bytes / dense_bytes, mem_method=mem.method)
        rows.append(row)
    if copy_bw is not None:
        for r, t in zip(rows, floors.values()):
            r["bw_GBps"] = io_bytes / t.median_s / 1e9
            r["bw_frac"] = io_bytes / t.median_s / copy_bw
    return rows


def main(argv=None):
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--backends", default="reference,cpp,triton",
                        help="comma list; unavailable ones are reported and skipped")
    parser.add_argument("--cases", default="lora_A,lora_B,full")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default fp32 CPU, bf16 GPU)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--lora-len", default="128,384", help="min,max tokens per sample (LoRA cases)")
    parser.add_argument("--full-len", default="64,128", help="min,max tokens per sample (full case)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dim", type=int, default=4096, help="d_in / d_out of the LoRA cases")
    parser.add_argument("--full-dim", type=int, default=2048, help="p = q of the full case")
    parser.add_argument("--dirs", type=int, default=2, help="K directions (LoRA cases)")
    parser.add_argument("--memory-all", action="store_true", help="measure peak memory for LoRA cases too")
    args = parser.parse_args(argv)
    device = setup(args)
    if args.smoke:
        args.samples, args.lora_len, args.full_len = 4, "8,24", "4,12"
        args.rank, args.dim, args.full_dim = 4, 64, 48
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    backends = [b for b in args.backends.split(",") if b]
    unknown = [b for b in backends if b not in BACKEND_NAMES]
    if unknown:
        parser.error(f"--backends: unknown {', '.join(unknown)}; choose among {', '.join(BACKEND_NAMES)}")
    if device.type == "cpu" and "triton" in backends:
        backends.remove("triton")  # the Triton interpreter on CPU is not a performance path
    facts = env_facts(device)
    # Achieved bandwidth (bytes of a and b / time) against a measured large copy: the
    # roofline of an op that must read a and b once. On CPU a 256 MiB copy (beyond cache).
    copy_bw = measured_copy_bandwidth(device, nbytes=(1 << 25) if args.smoke else
                                      (1 << 30) if device.type == "cuda" else (1 << 28))
    print(f"measured copy bandwidth (read + write): {copy_bw / 1e9:.1f} GB/s")

    all_rows = []
    for kind in args.cases.split(","):
        lo, hi = map(int, (args.full_len if kind == "full" else args.lora_len).split(","))
        case = make_case(kind, S=args.samples, t_lo=lo, t_hi=hi, r=args.rank,
                         d=args.full_dim if kind == "full" else args.dim,
                         K=0 if kind == "full" else args.dirs, dtype=dtype, device=device)
        rows = run_case(case, backends, device, args, facts, copy_bw)
        for r in rows:
            r["copy_GBps"] = copy_bw / 1e9
        cols = ["case", "backend", "dtype", "N", "p", "q", "K", "time_ms", "iqr_ms", "x_floor", "x_ref", "rel_err"]
        if copy_bw is not None:
            cols += ["bw_GBps", "bw_frac"]
        if kind == "full" or args.memory_all:
            cols += ["extra_peak_MB", "dense_grads_MB", "mem_frac_dense"]
        cols += ["status"]
        print_table(rows, cols, title=f"{kind}: S={case['S']} N={case['N']} gram={case['gram']} "
                                      f"{facts['device']} threads={facts['threads']}")
        all_rows += rows
    write_results(args, SCRIPT, all_rows)
    return all_rows


if __name__ == "__main__":
    main()
