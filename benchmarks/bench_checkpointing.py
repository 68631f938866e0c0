"""Peak memory of scoring one long sample on SmolLM2, with and without --gradient-checkpointing.

Each configuration runs in a fresh process (peak RSS is a process's high-water mark):
SmolLM2-135M-Instruct (fp32, CPU), zero-configuration scoring (a fresh LoRA state and the
shipped anchor directions, built once and cached before the timed runs), one sample of
--tokens tokens (Alpaca text repeated: prompt a quarter, response the rest), batch 1.
Recorded per configuration: the pass's own memory (the high-water mark of RSS, reset
before the pass, minus RSS before it; benchmarks/common.py), the peak, wall time and the
sample's sqsd (equal with and without checkpointing: the check that the recomputed pass is
the same pass). One JSON line each to results/checkpointing_smollm2.jsonl, and
a table.

Times are only comparable within one quiet run; say what else ran.

    python benchmarks/bench_checkpointing.py                 # 2048 and 8192 tokens
    python benchmarks/bench_checkpointing.py --one 2048 on   # one configuration
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from paths import RESULTS_DIR

REPO = Path(__file__).resolve().parent.parent
OUT = RESULTS_DIR / "checkpointing_smollm2.jsonl"
SHARED = REPO.parent / "shared" / "data" / "alpaca_5000.json"


def long_sample(tokenizer, n_tokens: int) -> dict:
    """A record of about ``n_tokens`` tokens: Alpaca instructions and answers repeated."""
    alpaca = json.loads(SHARED.read_text()) if SHARED.exists() else [
        {"instruction": "Describe the water cycle.", "output": "Water evaporates, condenses and falls as rain."}]
    text = " ".join(a["instruction"] + " " + a["output"] for a in alpaca[:400])
    ids = tokenizer(text)["input_ids"]
    while len(ids) < n_tokens:
        ids = ids + ids
    prompt = tokenizer.decode(ids[: n_tokens // 4])
    response = tokenizer.decode(ids[n_tokens // 4: n_tokens - 40])
    return {"instruction": prompt, "response": response}


def one(n_tokens: int, checkpointing: bool) -> dict:
    import torch
    torch.set_num_threads(1)
    from sqsd_fast.models import fetch_smollm2, resolve_model
    from sqsd_fast.app.pipeline import load_scorer, prepare
    from sqsd_fast.options import ScoreOptions

    model = str(resolve_model(fetch_smollm2(progress=False), progress=False))
    tmp = Path(f"/tmp/bench_ckpt_{n_tokens}.jsonl")
    from sqsd_fast.data.tokenize import load_tokenizer
    tmp.write_text(json.dumps(long_sample(load_tokenizer(model), n_tokens)) + "\n")
    options = ScoreOptions(model=model, data=str(tmp), out=f"/tmp/bench_ckpt_{n_tokens}.csv",
                           max_length=n_tokens + 64, gradient_checkpointing=checkpointing, quiet=True)
    prep = prepare(options)
    scorer = load_scorer(options)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import measure_peak_memory
    memory = measure_peak_memory(lambda: [r for batch in scorer.iter_score(
        prep.samples, batch_size=1, max_tokens=None, progress=False) for r in batch],
        torch.device("cpu"), keep_result=True)
    rows = memory.result
    return {"tokens": len(prep.samples[0].input_ids), "checkpointing": checkpointing,
            "peak_rss_mb": round(memory.peak_bytes / 2**20, 1), "pass_mb": round(memory.extra_bytes / 2**20, 1),
            "method": memory.method, "seconds": round(memory.seconds, 1),
            "sqsd": rows[0]["sqsd"], "status": rows[0]["status"], "threads": 1,
            "measured": __import__("time").strftime("%Y-%m-%d %H:%M:%S"), "device": "cpu"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("TOKENS", "on|off"))
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--min-available-gb", type=float, default=4.0,
                        help="stop a configuration when the machine has less memory available")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1] == "on")))
        return 0
    # build the cached state and anchor directions first, outside any measured process
    subprocess.run([sys.executable, __file__, "--one", "64", "off"], check=True, capture_output=True)
    for n in args.tokens:
        for mode in ("on", "off"):
            row = {**guarded(n, mode, args.min_available_gb), "note": args.note}
            OUT.parent.mkdir(parents=True, exist_ok=True)
            with open(OUT, "a") as f:
                f.write(json.dumps(row) + "\n")
            if row["status"] != "ok":
                print(f"{n:>6} tokens  checkpointing {mode:>3}: {row['status']} (peak {row['peak_rss_mb']} MB)")
                continue
            print(f"{row['tokens']:>6} tokens  checkpointing {mode:>3}: pass {row['pass_mb']:>8.1f} MB  peak "
                  f"{row['peak_rss_mb']:>8.1f} MB  {row['seconds']:>7.1f} s  sqsd {row['sqsd']:+.6f}", flush=True)
    return 0


def guarded(n: int, mode: str, min_available_gb: float) -> dict:
    """One configuration in a child process, stopped (and recorded as such, with its peak so
    far) when the machine's available memory falls below ``min_available_gb``: on a shared
    machine the benchmark must not be what the kernel's OOM killer picks another job for."""
    import time
    child = subprocess.Popen([sys.executable, __file__, "--one", str(n), mode], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    peak_kb = 0
    while child.poll() is None:
        try:
            peak_kb = max(peak_kb, _status_kb(child.pid, "VmHWM"))
        except (OSError, KeyError):
            pass
        if _available_gb() < min_available_gb:
            child.kill()
            child.wait()
            return {"tokens": n, "checkpointing": mode == "on", "status": f"stopped: less than "
                    f"{min_available_gb:g} GB of the machine's memory left", "peak_rss_mb": round(peak_kb / 1024, 1),
                    "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "device": "cpu"}
        time.sleep(0.2)
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"configuration {n} {mode} failed:\n{err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


if __name__ == "__main__":
    raise SystemExit(main())
