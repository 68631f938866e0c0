"""Shared benchmark plumbing: timing, peak memory, environment facts, CSV rows.

Timing
    CPU: ``torch.utils.benchmark.Timer(...).blocked_autorange`` after explicit warm-up
    calls; we report the median over all measured runs (and the IQR as a noise figure).
    GPU: ``triton.testing.do_bench`` (median, with its own warm-up and L2 flush).

Peak memory
    CPU: the process's resident-set high-water mark (``VmHWM`` in /proc/self/status),
    reset right before the measured call by writing ``5`` to /proc/self/clear_refs
    (Linux >= 4.0), after ``malloc_trim(0)`` has returned freed heap memory to the OS.
    ``extra`` = high-water during the call minus RSS just before it: every byte the OS had
    to back with RAM during the call (temporaries included, since large blocks are
    mmapped and small ones come from a just-trimmed heap), not bytes requested from an
    allocator; fragmentation can make it a little larger than the live-tensor peak.
    When the reset is not permitted we say so in the ``mem_method`` column and fall back
    to ``ru_maxrss`` of the process (an upper bound).
    GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
    memory allocated before the call (bytes handed out by the caching allocator).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import os
import platform
import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from paths import REPO_ROOT, RESULTS_DIR



# --------------------------------------------------------------------------- args
def base_parser(description: str) -> argparse.ArgumentParser:
    """Options every benchmark script shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, few repeats: checks the script runs (seconds); not a measurement")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                        help="where CSV rows (and plots) are written")
    parser.add_argument("--no-csv", action="store_true", help="print the table only")
    parser.add_argument("--min-run-time", type=float, default=None,
                        help="seconds of measured runs per case on CPU (Timer.blocked_autorange)")
    return parser


def setup(args) -> torch.device:
    if args.threads is None and args.smoke:
        args.threads = 1  # smoke runs share CI machines: one thread avoids OpenMP oversubscription stalls
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.device_given = args.device is not None  # a model preset's own device yields to an explicit --device
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch.cuda.is_available() is False")
    if args.min_run_time is None:
        args.min_run_time = 0.05 if args.smoke else 1.0
    return device


# --------------------------------------------------------------------------- environment
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name)
        return getattr(module, "__version__", "unknown")
    except Exception:
        return "absent"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return commit + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:
        return "unknown"


def env_facts(device: torch.device) -> dict:
    """Columns every CSV row carries."""
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device_name(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "sqsd_fast": _version("sqsd_fast"),
        "python": platform.python_version(),
        "git": git_commit(),
        # which CPU tile path bf16 inputs take (csrc/cpu: use_bf16_gemm); "auto" = detected
        "cpu_bf16_gemm": os.environ.get("SQSD_FAST_CPU_BF16_GEMM") or "auto",
        # 1-minute load average when the run started: on a shared machine, the noise flag
        "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else "",
    }


# --------------------------------------------------------------------------- timing
@dataclass
class Timing:
    median_s: float
    iqr_s: float
    runs: int

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_time(fn: Callable[[], object], device: torch.device, *, min_run_time: float = 1.0,
                 warmup: int = 2) -> Timing:
    """Median wall time of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        import triton.testing

        ms = triton.testing.do_bench(fn, warmup=25, rep=max(100, int(min_run_time * 1e3)),
                                     return_mode="median")
        return Timing(ms / 1e3, float("nan"), -1)
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    # blocked_autorange reports per-call times of each block; with slow calls a block is 1 call.
    return Timing(m.median, m.iqr, len(m.raw_times) * m.number_per_run)


def measure_repeats(fn: Callable[[], object], device: torch.device, *, repeats: int = 3,
                    warmup: int = 1) -> Timing:
    """Median of ``repeats`` single calls, for long calls (whole scoring passes)."""
    import time

    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Timing(statistics.median(times), q[2] - q[0], len(times))


# --------------------------------------------------------------------------- memory
def _read_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _release_free_heap() -> None:
    """Give freed-but-retained malloc memory back to the OS, so "RSS before" is honest."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Memory:
    extra_bytes: int     # high-water during the call minus usage right before it
    peak_bytes: int      # absolute high-water during the call (process RSS / CUDA allocated)
    method: str
    seconds: float = float("nan")  # wall time of the call itself
    result: object = None          # what fn returned (when keep_result=True)


def measure_peak_memory(fn: Callable[[], object], device: torch.device, *,
                        keep_result: bool = False) -> Memory:
    """Peak memory (and wall time) of one call of ``fn()``; see the module docstring."""
    import time

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device)
        return Memory(peak - before, peak, "cuda.max_memory_allocated", seconds,
                      out if keep_result else None)
    _release_free_heap()
    before = _read_status_kb("VmRSS") * 1024
    if _reset_hwm():
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        peak = _read_status_kb("VmHWM") * 1024
        method = "rss_hwm_reset"
    else:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        method = "ru_maxrss_process"
    return Memory(max(0, peak - before), peak, method, seconds, out if keep_result else None)


# --------------------------------------------------------------------------- results
def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are zero)."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref64.norm().item()
    num = (out64 - ref64).norm().item()
    if denom == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / denom


def append_csv(path: Path, rows: Iterable[dict]) -> None:
    """Append rows; if the columns changed, rewrite the file with the union of columns."""
    rows = list(rows)
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    old_rows: list[dict] = []
    fields: list[str] = []
    if path.exists() and path.stat().st_size > 0:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            old_rows = list(reader)
    for row in rows:
        for key in row:
            if key not in fields:
                fields.append(key)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        for row in old_rows + rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def print_table(rows: list[dict], columns: list[str], title: str | None = None) -> None:
    if title:
        print(f"\n== {title} ==")
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    sys.stdout.flush()


def _cell(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 72 else text[:69] + "..."


def write_results(args, script: str, rows: list[dict]) -> Path | None:
    if args.no_csv or not rows:
        return None
    path = Path(args.out_dir) / f"{script}.csv"
    mode = "smoke" if args.smoke else "full"
    append_csv(path, [{**r, "mode": mode} for r in rows])
    print(f"\nappended {len(rows)} rows to {path}")
    return path
