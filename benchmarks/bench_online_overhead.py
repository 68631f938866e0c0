"""What online SQSD costs a fine-tune: train-adapter with and without --online-score.

SmolLM2-135M-Instruct (fp32, CPU), the validation recipe's fine-tune (LoRA r 8, alpha 16,
all linear modules, dropout 0.05, lr 5e-4, batch 8, max length 256) on --samples Alpaca
records for --epochs epochs, each configuration in a fresh process (peak RSS is a process's
high-water mark; the training's own wall time is train_summary.json's runtime_s). The online
run scores every sample at every step on two directions: the zero-configuration anchor
directions built at the training's start state are not what a user would monitor, so two
small random LoRA directions of the same modules are written first (the cost does not depend
on what the directions hold). The extra pass that scores every sample at the start weights
(the stationarity check) is timed apart (train_summary.json's online.start_pass_s) and taken
out of the training time. The goal (issue #26): <= 1.10x the time and <=
1.05x the memory of plain training. One JSON line per configuration to
results/online_overhead_smollm2.jsonl, and a table.

--bergson-python (the python of a separate venv with bergson; not a dependency): the same
fine-tune with and without bergson's per-sample gradient callback, in that venv
(benchmarks/peers/bergson_callback.py: HF Trainer + peft, the same recipe and data), so its
overhead stands beside ours, each against a plain run in its own environment.

    python benchmarks/bench_online_overhead.py --note "what else ran" [--bergson-python PY]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paths import RESULTS_DIR

REPO = Path(__file__).resolve().parent.parent
OUT = RESULTS_DIR / "online_overhead_smollm2.jsonl"
SHARED = REPO.parent / "shared" / "data" / "alpaca_5000.json"


def random_direction(model_dir: str, out: Path, seed: int) -> None:
    """A LoRA adapter with random A and B on every linear module (a direction to project on)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    peft.save_pretrained(out)


def one(mode: str, data: str, work: str, epochs: int, directions: list[str]) -> dict:
    import resource

    from sqsd_fast.models import fetch_smollm2
    from sqsd_fast.training import train_adapter
    out = Path(work) / f"adapter-{mode}"
    extra = {"online_score": directions} if mode == "online" else {}
    started = time.time()
    result = train_adapter(model=str(fetch_smollm2(progress=False)), data=data, out=str(out), num_epochs=epochs,
                           batch_size=8, learning_rate=5e-4, max_length=256, no_progress=True, quiet=True,
                           seed=42, **extra)
    total = time.time() - started
    start_pass = (result.online or {}).get("start_pass_s", 0.0)
    return {"mode": mode, "train_s": round(result.runtime_s - start_pass, 1), "start_pass_s": start_pass,
            "call_s": round(total, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "steps": result.global_step, "samples": result.n_samples,
            "online_rows": (result.online or {}).get("rows_this_run"),
            "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "device": "cpu"}


def record(row: dict) -> dict:
    """Appends one configuration's row to OUT as it finishes (a later failure loses nothing)."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--note", default="")
    parser.add_argument("--bergson-python", default=None, help="python of a venv with bergson (see the docstring)")
    parser.add_argument("--one", nargs=4, metavar=("MODE", "DATA", "WORK", "DIRS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        mode, data, work, dirs = args.one
        print(json.dumps(one(mode, data, work, args.epochs, json.loads(dirs))))
        return 0
    from sqsd_fast.models import fetch_smollm2, resolve_model
    work = Path(tempfile.mkdtemp(prefix="bench_online_"))
    alpaca = json.loads(SHARED.read_text())[:args.samples]
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": a["instruction"], "context": a["input"],
                                        "response": a["output"]}) + "\n" for a in alpaca))
    model_dir = str(resolve_model(fetch_smollm2(progress=False), progress=False))
    directions = []
    for name, seed in (("danger", 1), ("safety", 2)):
        random_direction(model_dir, work / name, seed)
        directions.append(f"{name}={work / name}")
    rows = []
    for mode in ("plain", "online"):
        done = subprocess.run([sys.executable, __file__, "--epochs", str(args.epochs), "--one", mode, str(data),
                               str(work), json.dumps(directions)], capture_output=True, text=True, check=True)
        rows.append(record({**json.loads(done.stdout.strip().splitlines()[-1]), "note": args.note}))
    if args.bergson_python:
        peer = Path(__file__).resolve().parent / "peers" / "bergson_callback.py"
        for mode in ("plain", "bergson"):
            done = subprocess.run([args.bergson_python, str(peer), "--model", model_dir, "--data", str(data),
                                   "--work", str(work / f"bergson-{mode}"), "--mode", mode,
                                   "--epochs", str(args.epochs)], capture_output=True, text=True, check=True)
            peer_row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(record({
                "mode": f"bergson-venv {mode}", "train_s": peer_row["train_s"], "start_pass_s": 0.0,
                "call_s": peer_row["train_s"], "peak_rss_mb": peer_row["peak_rss_mb"], "steps": peer_row["steps"],
                "samples": peer_row["samples"], "bergson": peer_row["bergson"],
                "projection_dim": peer_row["projection_dim"], "stored_bytes": peer_row["stored_bytes"],
                "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "device": "cpu", "note": args.note}))
    plain, online = rows[:2]
    print(f"{'mode':<8} {'train s':>8} {'start pass s':>13} {'call s':>8} {'peak MB':>9} {'steps':>6}")
    for r in rows:
        print(f"{r['mode']:<8} {r['train_s']:>8} {r['start_pass_s']:>13} {r['call_s']:>8} {r['peak_rss_mb']:>9} "
              f"{r['steps']:>6}")
    print(f"online / plain: time {online['train_s'] / plain['train_s']:.3f}x (training with online scoring), "
          f"{online['call_s'] / plain['call_s']:.3f}x (with the start-weight pass); "
          f"memory {online['peak_rss_mb'] / plain['peak_rss_mb']:.3f}x")
    if len(rows) == 4:
        their_plain, theirs = rows[2:]
        print(f"bergson callback / plain (its venv): time {theirs['train_s'] / their_plain['train_s']:.3f}x, "
              f"memory {theirs['peak_rss_mb'] / their_plain['peak_rss_mb']:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
