"""Regenerates the tables of BENCHMARKS.md from results/*.csv.

Only the text between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` is
replaced; everything else in BENCHMARKS.md is hand-written and kept. For each script the
latest full (non-smoke) run per device (and model preset) is shown; rows of one run share
its ``date_utc``. No number in the tables is typed by hand.

    python benchmarks/make_report.py [--results results] [--doc BENCHMARKS.md] [--check]
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

from paths import RESULTS_DIR

REPO = Path(__file__).resolve().parent.parent


def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("mode", "full") == "full"]


def latest_runs(rows: list[dict], group_keys: tuple[str, ...]) -> list[list[dict]]:
    """The rows of the latest run of every group (device, preset, ...)."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        g = tuple(_sort_key(r.get(k, "")) for k in group_keys)
        groups.setdefault(g, {}).setdefault(r["date_utc"], []).append(r)
    return [runs[max(runs)] for _, runs in sorted(groups.items())]


def _sort_key(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def num(value, digits=3):
    if value in (None, ""):
        return ""
    try:
        x = float(value)
    except ValueError:
        return str(value)
    if x != x:
        return ""
    if x == int(x) and abs(x) < 1e15 and "." not in str(value).rstrip("0").rstrip(".") :
        return f"{int(x):,}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 0.01 or x == 0:
        return f"{x:.{digits}g}"
    return f"{x:.2e}"


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for title, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for _, key in columns:
            v = r.get(key, "")
            cells.append(num(v) if key not in TEXT_COLUMNS else str(v).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


TEXT_COLUMNS = {"case", "backend", "method", "dtype", "status", "axis", "phase", "gram", "mem_method", "date_utc"}


def provenance(run: list[dict]) -> str:
    r = run[0]
    load = f", load average {r['load_1min']} at start" if r.get("load_1min") else ""
    return (f"*{r['device']} ({r['device_type']}), {r['threads']} threads{load}, torch {r['torch']}, "
            f"triton {r['triton']}, sqsd_fast {r['sqsd_fast']} (git {r['git']}), {r['date_utc']}.*")


def kernels_section(results: Path) -> str:
    runs = latest_runs(read(results / "bench_kernels.csv"), ("device", "dtype", "cpu_bf16_gemm"))
    if not runs:
        return "_No full run recorded yet (`python benchmarks/bench_kernels.py`)._"
    parts = []
    for run in runs:
        copy = run[0].get("copy_GBps", "")
        path = run[0].get("cpu_bf16_gemm", "")
        tiles = ""
        if run[0]["dtype"] == "bfloat16" and run[0]["device_type"] == "cpu":
            tiles = {"0": " CPU tiles: inputs widened to fp32 (SQSD_FAST_CPU_BF16_GEMM=0).",
                     "1": " CPU tiles: bf16 GEMM (SQSD_FAST_CPU_BF16_GEMM=1).",
                     "auto": " CPU tiles: as detected."}.get(path, "")
        parts.append(f"### {run[0]['dtype']} on {run[0]['device']}\n\n" + provenance(run)
                     + (f" Measured copy bandwidth {num(copy)} GB/s (read + write)." if copy else "") + tiles)
        cols = [("case", "case"), ("backend", "backend"), ("dtype", "dtype"), ("N rows", "N"), ("p", "p"),
                ("q", "q"), ("K", "K"), ("gram", "gram"), ("median ms", "time_ms"), ("IQR ms", "iqr_ms"),
                ("x floor (time / mm)", "x_floor"), ("speed-up vs reference", "x_ref"),
                ("rel. error", "rel_err")]
        if any(r.get("bw_frac") for r in run):
            cols += [("GB/s", "bw_GBps"), ("of copy BW", "bw_frac")]
        if any(r.get("mem_frac_dense") for r in run):
            cols += [("extra peak MB", "extra_peak_MB"), ("dense grads MB", "dense_grads_MB"),
                     ("extra / dense", "mem_frac_dense")]
        cols += [("status", "status")]
        parts.append(table(run, cols))
    return "\n\n".join(parts)


def e2e_section(results: Path) -> str:
    runs = latest_runs(read(results / "bench_e2e.csv"), ("device", "preset"))
    if not runs:
        return "_No full run recorded yet (`python benchmarks/bench_e2e.py`)._"
    parts = []
    for run in runs:
        final = [r for r in run if r.get("phase") == "final"]
        sweep = [r for r in run if r.get("phase") == "sweep"]
        r0 = final[0] if final else run[0]
        parts.append(f"### {r0['preset']} on {r0['device']}\n\n" + provenance(run) +
                     f" Preset {r0['preset']} ({num(r0['params_M'])}M parameters, "
                     f"{r0['dtype']}), {r0['samples']} samples / {r0['tokens']} tokens of {r0['data']}; "
                     f"agreement tolerance {r0['tol']} on the summed cosine.")
        cols = [("method", "method"), ("backend", "backend"), ("batch", "batch_size"),
                ("max tokens", "max_tokens"), ("time s", "time_s"),
                ("samples/s", "samples_per_s"), ("x floor time", "x_floor_time"),
                ("x authors' throughput", "x_authors_throughput"), ("peak RSS/alloc MB", "peak_MB"),
                ("peak / authors'", "x_authors_peak_mem"), ("extra peak MB", "extra_peak_MB"),
                ("peak / floor's", "x_floor_peak_mem"), ("max abs diff", "max_abs_diff")]
        cols = [c for c in cols if any(r.get(c[1], "") != "" for r in run)]
        parts.append(f"Final (median of {final[0]['repeats'] if final else '?'} interleaved passes):\n\n"
                     + table(final, cols))
        goals = e2e_goals(final, r0["preset"])
        if goals:
            parts.append("Goals:\n\n" + "\n".join(f"- {g}" for g in goals))
        history = e2e_history(results, r0)
        if history:
            parts.append(history)
        if sweep:
            parts.append(f"Batching sweep (one pass each over the first {sweep[0]['samples']} samples; "
                         "picks the best engine and floor):\n\n"
                         + table(sweep, [c for c in cols if "authors" not in c[1]]))
    return "\n\n".join(parts)


def e2e_goals(final: list[dict], preset: str) -> list[str]:
    """The goals of bench_e2e's docstring, each with its value and met / not met."""
    def verdict(value, limit, at_least=False):
        x = float(value)
        ok = x >= limit if at_least else x <= limit
        return f"{num(x)} ({'>=' if at_least else '<='} {limit}: {'met' if ok else 'not met'})"

    fast = next((r for r in final if r["method"] == "engine" and r["backend"] != "reference"), None)
    default = next((r for r in final if r["method"] == "default"), None)
    goals = []
    if fast:
        batching = f"batch {fast['batch_size']}" + (f", {fast['max_tokens']} tokens" if fast.get("max_tokens") else "")
        goals.append(f"best engine ({fast['backend']}, {batching}) time / floor's: "
                     f"{verdict(fast['x_floor_time'], 1.10)}")
        if fast.get("x_authors_throughput"):
            goals.append(f"best engine throughput / authors': {verdict(fast['x_authors_throughput'], 1.4, True)}")
        goals.append(f"best engine peak / floor's: {verdict(fast['x_floor_peak_mem'], 1.10)}")
    if default:
        goals.append(f"defaults (batch {default['batch_size']}, {default['max_tokens']} tokens) time / best "
                     f"floor's: {verdict(default['x_floor_time'], 1.10)}")
        if default.get("x_authors_throughput"):
            goal = 1.5 if preset == "smollm2" else 1.4
            goals.append(f"defaults throughput / authors': {verdict(default['x_authors_throughput'], goal, True)}")
            goals.append(f"defaults peak RSS / authors': {verdict(default['x_authors_peak_mem'], 1.5)}")
    return goals


def e2e_history(results: Path, like: dict) -> str:
    """Every full run of the same device and preset, one line each, to show run-to-run spread."""
    runs: dict[str, list[dict]] = {}
    for r in read(results / "bench_e2e.csv"):
        if r["device"] == like["device"] and r["preset"] == like["preset"] and r.get("phase") == "final":
            runs.setdefault(r["date_utc"], []).append(r)
    if len(runs) < 2:
        return ""
    lines = []
    for date in sorted(runs):
        run = runs[date]
        fast = next((r for r in run if r["method"] == "engine" and r["backend"] != "reference"), None)
        ref = next((r for r in run if r["method"] == "engine" and r["backend"] == "reference"), None)
        if fast is None:
            continue
        lines.append({"date_utc": date, "threads": fast["threads"], "samples": fast["samples"],
                      "batch_size": fast["batch_size"], "x_floor_time": fast["x_floor_time"],
                      "x_authors_throughput": fast.get("x_authors_throughput", ""),
                      "ref_x_floor": ref["x_floor_time"] if ref else "",
                      "x_floor_peak_mem": fast["x_floor_peak_mem"], "x_floor_extra_mem": fast["x_floor_extra_mem"]})
    return ("Every full run on this device and preset (fastest backend's ratios; the table above is the "
            "latest):\n\n" + table(lines, [("run (UTC)", "date_utc"), ("threads", "threads"), ("samples", "samples"),
                                         ("batch", "batch_size"), ("engine / floor time", "x_floor_time"),
                                         ("x authors' throughput", "x_authors_throughput"),
                                         ("reference engine / floor", "ref_x_floor"),
                                         ("peak / floor's", "x_floor_peak_mem"),
                                         ("extra peak / floor's", "x_floor_extra_mem")]))


def per_sample_section(results: Path) -> str:
    runs = latest_runs(read(results / "bench_per_sample.csv"), ("device", "preset", "batch_size"))
    if not runs:
        return "_No full run recorded yet (`python benchmarks/bench_per_sample.py`)._"
    parts = []
    for run in runs:
        r0 = run[0]
        parts.append(provenance(run) + f" Preset {r0['preset']}, one batch of {r0['batch_size']} samples "
                     f"({r0.get('tokens', '')} tokens, {r0.get('padded_tokens', '')} padded), "
                     f"{r0.get('modules', '')} LoRA modules.")
        parts.append(table(run, [("method", "method"), ("median ms", "time_ms"), ("samples/s", "samples_per_s"),
                                 ("speed vs torch.func", "x_torch_func_speed"), ("extra peak MB", "extra_peak_MB"),
                                 ("memory vs torch.func", "x_torch_func_mem"), ("rel. error", "rel_err"),
                                 ("status", "status")]))
    return "\n\n".join(parts)


def scaling_section(results: Path) -> str:
    runs = latest_runs(read(results / "bench_scaling.csv"), ("device", "preset"))
    if not runs:
        return "_No full run recorded yet (`python benchmarks/bench_scaling.py`)._"
    parts = []
    for run in runs:
        preset = run[0]["preset"]
        png = "bench_scaling.png" if preset in ("cpu-llama", "smoke") else f"bench_scaling_{preset}.png"
        parts.append(f"### {preset} on {run[0]['device']}\n\n" + provenance(run) +
                     f" Preset {preset}, engine backend "
                     f"{next((r['backend'] for r in run if r['method'] == 'engine'), '?')}. "
                     f"One pass per point. Plot: `results/{png}`.")
        merged = []
        for eng in (r for r in run if r["method"] == "engine"):
            fl = next((r for r in run if r["method"] == "floor" and r["axis"] == eng["axis"]
                       and r["value"] == eng["value"]), {})
            merged.append({"axis": eng["axis"], "value": eng["value"], "samples": eng["samples"],
                           "batch_size": eng["batch_size"], "max_tokens": eng.get("max_tokens", ""),
                           "tokens": eng["tokens"], "e_ms": eng["ms_per_sample"], "f_ms": fl.get("ms_per_sample", ""),
                           "x_floor": eng.get("x_floor", ""), "e_peak": eng.get("peak_MB", ""),
                           "f_peak": fl.get("peak_MB", ""), "e_mem": eng["extra_peak_MB"],
                           "f_mem": fl.get("extra_peak_MB", "")})
        cols = [("axis", "axis"), ("value", "value"), ("samples", "samples"), ("batch", "batch_size"),
                ("max tokens", "max_tokens"), ("tokens", "tokens"), ("engine ms/sample", "e_ms"),
                ("floor ms/sample", "f_ms"), ("engine / floor", "x_floor"), ("engine peak MB", "e_peak"),
                ("floor peak MB", "f_peak"), ("engine extra peak MB", "e_mem"), ("floor extra peak MB", "f_mem")]
        parts.append(table(merged, [c for c in cols if any(m.get(c[1], "") != "" for m in merged)]))
        procs = [r for r in run if r["axis"] == "processes"]
        if procs:
            parts.append("`sqsd-fast score` under torchrun (whole command, model loading included; peak = "
                         "the largest process's RSS):\n\n" + table(procs, [
                             ("processes", "value"), ("threads each", "threads_per_process"),
                             ("samples", "samples"), ("tokens", "tokens"), ("time s", "time_s"),
                             ("ms/sample", "ms_per_sample"), ("tokens/s", "tokens_per_s"),
                             ("peak MB per process", "peak_MB")]))
    return "\n\n".join(parts)


def influence_section(results: Path) -> str:
    runs = latest_runs(read(results / "bench_influence.csv"), ("device", "model"))
    if not runs:
        return "_No full run recorded yet (`python benchmarks/bench_influence.py`)._"
    parts = []
    for run in runs:
        r0 = run[0]
        parts.append(provenance(run) + f" Model {r0['model']}: {r0['samples']} samples "
                     f"({r0['tokens']} tokens), {r0['modules']} LoRA modules, "
                     f"{r0['lora_params']} LoRA parameters.")
        parts.append(table(run, [("method", "method"), ("batch", "batch_size"),
                                 ("sketch dim", "proj_dim"), ("ms/sample", "ms_per_sample"),
                                 ("speed vs LESS loop", "speedup_vs_less"),
                                 ("extra peak MB", "extra_peak_MB"),
                                 ("cosine abs. error vs float64", "cos_abs_err"),
                                 ("sketch rel. error", "sketch_rel_err"), ("status", "status")]))
    return "\n\n".join(parts)


def vocab_memory_section(results: Path) -> str:
    runs = latest_runs(read(results / "bench_vocab_memory.csv"), ("device",))
    if not runs:
        return "_No full run recorded yet (`python benchmarks/bench_vocab_memory.py`)._"
    parts = []
    for run in runs:
        r0 = run[0]
        parts.append(provenance(run) + f" One scoring pass of {r0['samples']} samples "
                     f"({r0['response_tokens']} response tokens) on a toy Llama (hidden 64, "
                     f"2 layers).")
        parts.append(table(run, [("vocabulary", "vocab"), ("loss", "loss"),
                                 ("rows per chunk", "chunk_rows"),
                                 ("extra peak MB", "extra_peak_mb"), ("seconds", "seconds"),
                                 ("max abs. diff of the scores", "max_abs_diff_vs_chunked")]))
    return "\n\n".join(parts)


def vocab_memory_gemma3_section(results: Path) -> str:
    runs = latest_runs(read(results / "bench_vocab_memory_gemma3.csv"), ("device",))
    if not runs:
        return "_No full run recorded yet (`python benchmarks/bench_vocab_memory_gemma3.py`)._"
    parts = []
    for run in runs:
        r0 = run[0]
        parts.append(provenance(run) + f" One scoring pass of {r0['samples']} samples ({r0['tokens']} tokens, "
                     f"{r0['response_tokens']} response tokens) on Gemma 3 270M (float32, vocabulary "
                     f"{int(r0['vocab']):,}); the batch's logits alone would take {num(r0['logits_mb'])} MB.")
        parts.append(table(run, [("loss", "loss"), ("rows per chunk", "chunk_rows"),
                                 ("extra peak MB", "extra_peak_mb"), ("peak RSS MB", "peak_mb"),
                                 ("seconds", "seconds"),
                                 ("max abs. diff of the scores", "max_abs_diff_vs_chunked"),
                                 ("max rel. diff", "max_rel_diff_vs_chunked")]))
    return "\n\n".join(parts)


SECTIONS = {"kernels": kernels_section, "e2e": e2e_section, "per_sample": per_sample_section,
            "scaling": scaling_section, "influence": influence_section,
            "vocab_memory": vocab_memory_section, "vocab_memory_gemma3": vocab_memory_gemma3_section}


def render(doc: str, results: Path) -> str:
    for name, fn in SECTIONS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(doc):
            raise SystemExit(f"BENCHMARKS.md has no <!-- generated:{name} --> ... <!-- /generated:{name} --> block")
        body = fn(results)
        doc = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), doc)
    return doc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--doc", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of --doc")
    parser.add_argument("--check", action="store_true", help="exit 1 if --doc is not up to date")
    args = parser.parse_args(argv)
    doc = args.doc.read_text()
    new = render(doc, args.results)
    if args.check:
        if new != doc:
            print(f"{args.doc} is out of date: run python benchmarks/make_report.py")
            return 1
        return 0
    out = args.out or args.doc
    out.write_text(new)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
