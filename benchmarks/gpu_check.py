"""`make gpu-check`: everything that needs a GPU, in one command, in under 8 minutes.

On a machine with a CUDA GPU, in order, each step under its own time limit (a step that
fails or runs out of time is reported and the next one runs):
  build     sqsd_fast._C with the CUDA kernels, in place, for this GPU's architecture
  tests     every `gpu`-marked test (pytest -m gpu)
  kernels   the kernel op against one torch.mm and the copy bandwidth (bench_kernels.py)
  e2e       scoring end to end against the authors' algorithm and the floor: the ~0.5B
            synthetic preset (no download), then SmolLM2 where its GGUF is in the cache
            or can be fetched (bench_e2e.py)
  budget    the default token budget's memory estimate against the measured peak
            (engine/token_budget.py: bytes_per_token), a 0.5B-shaped model in bf16
CSV files go to results/gpu/<device>/, with the device named in every row, and
a summary of the steps to steps.csv there.

On a machine without a CUDA GPU it says so and exits 0 without running anything.
`--cpu-rehearsal` runs the same steps on the CPU at smoke sizes, to check the script itself
where no GPU is at hand (its CSVs go to a temporary folder unless --out-dir is given).

    python benchmarks/gpu_check.py                  # what `make gpu-check` runs
    python benchmarks/gpu_check.py --cpu-rehearsal  # the script, checked on a CPU
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path[:0] = [str(BENCH), str(REPO)]   # benchmarks/common.py, and sqsd_fast built in place

from paths import RESULTS_DIR  # noqa: E402

# seconds per step on one H100 (the total stays under 8 minutes)
LIMITS = {"build": 150, "tests": 90, "kernels": 60, "e2e": 120, "budget": 40}
REHEARSAL_LIMITS = {"build": 300, "tests": 120, "kernels": 120, "e2e": 300, "budget": 120}


def _has_cuda() -> tuple[bool, str]:
    """Whether this interpreter's torch sees a CUDA GPU, and what it is (or why not)."""
    try:
        import torch
    except ImportError:
        return False, f"{sys.executable} has no torch"
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no CUDA GPU"
    return True, torch.cuda.get_device_name(0)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def _step(name: str, command: list[str], limit: float, log_dir: Path, env: dict | None = None,
          required: bool = True) -> dict:
    """Run one step in a subprocess under ``limit`` seconds; its output to log_dir/name.log."""
    shown = "python -c <build in place>" if "-c" in command else " ".join(command)
    print(f"gpu-check: {name}: {shown}", flush=True)
    start = time.monotonic()
    log = log_dir / f"{name}.log"
    with open(log, "w") as out:
        try:
            done = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=limit,
                                  env={**os.environ, **(env or {})})
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"ran out of its {limit:.0f} s"
    seconds = time.monotonic() - start
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    print(f"gpu-check: {name}: {status} in {seconds:.0f} s" + "".join(f"\n    {line}" for line in tail), flush=True)
    return {"step": name, "status": status, "required": required, "seconds": round(seconds, 1), "log": log.name}


def _build(device: str) -> list[str]:
    """The extension built in place with this interpreter's torch (the GPU image has no network, so
    no venv: its python3 holds torch, transformers and peft)."""
    code = ("import os, subprocess, sys, torch\n"
            "env = dict(os.environ)\n"
            f"if {device!r} == 'cuda':\n"
            "    env.setdefault('TORCH_CUDA_ARCH_LIST', '%d.%d' % torch.cuda.get_device_capability(0))\n"
            "else:\n"
            "    env['SQSD_FAST_NO_CUDA'] = '1'\n"
            "env.setdefault('MAX_JOBS', str(os.cpu_count() or 2))\n"
            "subprocess.run([sys.executable, 'setup.py', '-q', 'build_ext', '--inplace'], check=True, env=env)\n"
            "import sqsd_fast\n"
            "info = sqsd_fast.build_info()\n"
            "print('build_info:', {k: info[k] for k in ('built', 'torch_version', 'cuda_compiled', 'cuda_version')})\n"
            f"assert info['built'] and (info['cuda_compiled'] or {device!r} != 'cuda'), 'no CUDA kernels built'\n")
    return [sys.executable, "-c", code]


def _budget_check(out_dir: Path, device: str, rehearsal: bool) -> None:
    """Measured peak memory of scoring passes at fixed token budgets against the estimate
    the default budget is computed from; one CSV row per budget."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from common import append_csv, env_facts

    from sqsd_fast.engine.token_budget import bytes_per_token, default_max_tokens
    from sqsd_fast.scoring import SQSDScorer
    from sqsd_fast.testing.toy_model import build_random_lora

    dtype = torch.float32 if rehearsal else torch.bfloat16
    shape = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1024) if rehearsal else
             dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936))
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(Qwen2Config(**shape)).to(device=device, dtype=dtype)
    model = build_random_lora(base, ["state", "direction"], r=8, alpha=16)
    scorer = SQSDScorer.from_peft_model(model, danger_state="state", danger_direction="direction")
    length = 128 if rehearsal else 1024
    generator = torch.Generator().manual_seed(1)
    budgets = [256, 512] if rehearsal else [4096, 16384, 65536]
    samples = []
    for i in range(max(budgets) // length * 2):
        ids = torch.randint(10, shape["vocab_size"], (length,), generator=generator).tolist()
        samples.append({"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2:]})
    per_token = bytes_per_token(model.config, dtype)
    rows = []
    for budget in budgets:
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        scorer.project(samples, batch_size=None, max_tokens=budget, progress=False)
        seconds = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated() - before) if device == "cuda" else float("nan")
        rows.append({**env_facts(torch.device(device)), "max_tokens": budget, "samples": len(samples),
                     "sample_tokens": length, "estimated_bytes": per_token * budget, "measured_peak_bytes": peak,
                     "measured_over_estimate": peak / (per_token * budget), "seconds": round(seconds, 3),
                     "default_max_tokens": default_max_tokens(model, device)})
        print(f"  max_tokens {budget}: estimate {per_token * budget / 2**30:.2f} GiB, measured extra peak "
              f"{peak / 2**30:.2f} GiB, {seconds:.2f} s", flush=True)
    append_csv(out_dir / "token_budget.csv", rows)


def run_steps(out_dir: Path, device: str, rehearsal: bool) -> list[dict]:
    limits = REHEARSAL_LIMITS if rehearsal else LIMITS
    py = sys.executable
    smoke = ["--smoke"] if rehearsal else []
    steps = [
        ("build", _build(device), {}),
        ("tests", [py, "-m", "pytest", "-q", "-m", "gpu", "tests"], {"SQSD_FAST_REQUIRE_EXTENSION": "1"}),
        ("kernels", [py, str(BENCH / "bench_kernels.py"), "--device", device, "--out-dir", str(out_dir),
                     *(smoke or ["--min-run-time", "0.5"])], {}),
        ("e2e", [py, str(BENCH / "bench_e2e.py"), "--out-dir", str(out_dir), "--skip-reference",
                 *(smoke or ["--preset", "gpu-0.5b", "--samples", "128", "--repeats", "2"])], {}),
        ("budget", [py, str(Path(__file__).resolve()), "--budget-only", device, "--out-dir", str(out_dir),
                    *(["--cpu-rehearsal"] if rehearsal else [])], {}),
    ]
    results = [_step(name, command, limits[name], out_dir, env) for name, command, env in steps]
    if not rehearsal:   # the real model where its GGUF is at hand: the GPU image has no network,
        # so a missing model fails this step without failing the check
        results.append(_step("e2e-smollm2", [py, str(BENCH / "bench_e2e.py"), "--out-dir", str(out_dir),
                                             "--preset", "smollm2", "--device", device, "--skip-reference",
                                             "--samples", "64", "--repeats", "2"], limits["e2e"], out_dir,
                             required=False))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-rehearsal", action="store_true",
                        help="run every step on the CPU at smoke sizes (checks this script; no GPU numbers)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where the CSVs and logs go (default: results/gpu/<device>)")
    parser.add_argument("--budget-only", metavar="DEVICE", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget_only:
        _budget_check(args.out_dir, args.budget_only, args.cpu_rehearsal)
        return 0
    has_cuda, what = _has_cuda()
    if not has_cuda and not args.cpu_rehearsal:
        print(f"gpu-check: needs a CUDA GPU ({what}); nothing run. On a GPU machine: make gpu-check")
        return 0
    device = "cpu" if args.cpu_rehearsal else "cuda"
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="gpu-check-")) if args.cpu_rehearsal
                               else RESULTS_DIR / "gpu" / _slug(what))
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check on {what if has_cuda and not args.cpu_rehearsal else 'the CPU (rehearsal)'} -> {out_dir}")
    start = time.monotonic()
    results = run_steps(out_dir, device, args.cpu_rehearsal)
    with open(out_dir / "steps.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["device", *results[0]])
        writer.writeheader()
        writer.writerows({"device": what if not args.cpu_rehearsal else "cpu-rehearsal", **r} for r in results)
    print(f"gpu-check: {sum(r['status'] == 'ok' for r in results)} of {len(results)} steps ok in "
          f"{time.monotonic() - start:.0f} s; {out_dir}")
    return 0 if all(r["status"] == "ok" for r in results if r["required"]) else 1


if __name__ == "__main__":
    sys.exit(main())
