"""torchrun at 100k samples: a rank killed part-way, the run resumed, the one-process rows.

Issue #29 part 3 asks that resume and torchrun keep their guarantees at 100k samples; the
test suite checks them on a few dozen. This runs the same checks on --samples generated
records (bench_large_data's records and toy model) through the `sqsd-fast score` CLI:
  one process   the reference: one process, --threads threads (default 2)
  killed        torchrun, --ranks processes of one thread each; rank 1 is killed (SIGKILL,
                no clean-up) once it has saved --kill-after batches, as a lost node would be
                (sqsd_fast.testing.kill_rank)
  resumed       the same torchrun command with --resume: only the missing samples are
                scored, split among the ranks
and then compares the resumed table with the reference: the same indices in the same
order, the same ranks and statuses, the largest difference in each score column.
Reported per step: wall time, the largest process's peak RSS (a rank's, under torchrun),
and for the resumed step the rows the killed ranks had saved in their sidecars. Rows: results/large_data_torchrun.jsonl.

Resumable by step: a step whose output is in --work is not run again (the killed step's
mark is its sidecars, or the finished table). Delete --work to redo everything.

    python benchmarks/bench_large_torchrun.py                      # 100k toy records
    python benchmarks/bench_large_torchrun.py --samples 300 --kill-after 20 --work /tmp/t
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]

from bench_large_data import WORK_ROOT, model_options, write_records  # noqa: E402
from paths import RESULTS_DIR  # noqa: E402
from sqsd_fast.testing.kill_rank import kill_rank_hook  # noqa: E402

RESULTS = RESULTS_DIR / "large_data_torchrun.jsonl"
SCORE_COLUMNS = ("danger_proj", "safety_proj", "sqsd")
ROUNDING = 1e-5      # float32 sums in another order (other batches): far below any score's scale

def score_argv(options: dict, data: Path, out: Path) -> list[str]:
    return ["score", "--model", options["model"], "--danger-state", options["danger_state"],
            "--danger-direction", options["danger_direction"], "--safety-direction", options["safety_direction"],
            "--data", str(data), "--out", str(out), "--no-progress", "--quiet"]


# Runs a command and prints the largest peak RSS among its processes (torchrun's ranks
# included): a fresh parent per step, so one step's peak does not carry into the next.
PEAK_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
                "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
                "sys.exit(rc)")


def timed(command: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a command; its result, wall seconds and its largest process's peak RSS in MB."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *command], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak_kb = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("peak_rss_kb"))
    return done, wall, peak_kb / 1024


def torchrun(ranks: int, argv: list[str]) -> list[str]:
    cli = str(Path(sys.executable).parent / "sqsd-fast")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
            "--no-python", cli, *argv]


def read_table(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare(rows: list[dict], want: list[dict]) -> dict:
    """What the guarantees promise: the one-process table, scores up to float rounding."""
    same = {"same_indices_in_order": [r["index"] for r in rows] == [r["index"] for r in want],
            "same_ranks": [r["rank"] for r in rows] == [r["rank"] for r in want],
            "same_statuses": [r["status"] for r in rows] == [r["status"] for r in want]}
    by_index = {r["index"]: r for r in rows}
    for key in SCORE_COLUMNS:
        diffs = [abs(by_index[r["index"]][key] - r[key]) for r in want
                 if r["index"] in by_index and r[key] is not None and by_index[r["index"]][key] is not None]
        same[f"max_abs_diff_{key}"] = max(diffs, default=None)
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the one-process reference")
    parser.add_argument("--kill-after", type=int, default=5000,
                        help="rank 1 is killed once it has saved this many batches")
    parser.add_argument("--work", type=Path, default=None, help=f"default {WORK_ROOT}/torchrun-SAMPLES")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON lines appended here")
    args = parser.parse_args()
    work = args.work or WORK_ROOT / f"torchrun-{args.samples}"
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data.jsonl"
    if not data.exists():
        write_records(data, args.samples)
    options = model_options("toy", work)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    one, ranked = work / "one_process.jsonl", work / "torchrun.jsonl"
    steps = []
    if not one.exists():
        done, wall, peak = timed([str(Path(sys.executable).parent / "sqsd-fast"), *score_argv(options, data, one)],
                                 {**env, "OMP_NUM_THREADS": str(args.threads)})
        if done.returncode != 0:
            raise SystemExit(f"the one-process run failed:\n{done.stderr[-3000:]}")
        steps.append({"step": "one process", "wall_s": round(wall, 1), "peak_rss_mb": round(peak, 1)})
    rank_env = {**env, "OMP_NUM_THREADS": "1"}
    if not ranked.exists() and not list(work.glob("torchrun.jsonl.rank*")):
        hook = kill_rank_hook(work / "kill_hook", rank=1, after=args.kill_after)
        done, wall, peak = timed(torchrun(args.ranks, score_argv(options, data, ranked)), {**rank_env, **hook})
        if done.returncode == 0:
            raise SystemExit(f"rank 1 was not killed: it has fewer than {args.kill_after} batches; "
                             "give a smaller --kill-after")
        steps.append({"step": "torchrun, rank 1 killed", "wall_s": round(wall, 1), "peak_rss_mb": round(peak, 1)})
    if not ranked.exists():
        saved = sum(path.read_text().count("\n") for path in work.glob("torchrun.jsonl.rank*.partial.jsonl"))
        done, wall, peak = timed(torchrun(args.ranks, [*score_argv(options, data, ranked), "--resume"]), rank_env)
        if done.returncode != 0:
            raise SystemExit(f"the resumed torchrun failed:\n{done.stderr[-3000:]}")
        steps.append({"step": "torchrun --resume", "wall_s": round(wall, 1), "peak_rss_mb": round(peak, 1),
                      "resumed": saved})
    checks = compare(read_table(ranked), read_table(one))
    from common import env_facts
    import torch
    facts = env_facts(torch.device("cpu"))
    print(f"{'step':<26} {'wall s':>8} {'peak RSS MB':>11}  resumed")
    for step in steps:
        print(f"{step['step']:<26} {step['wall_s']:>8} {step['peak_rss_mb']:>11}  {step.get('resumed', '')}")
    print(json.dumps(checks, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as handle:
        handle.write(json.dumps({**facts, "samples": args.samples, "ranks": args.ranks, "kill_after": args.kill_after,
                                 "steps": steps, **checks}) + "\n")
    ok = all(checks[k] for k in ("same_indices_in_order", "same_ranks", "same_statuses")) and all(
        (checks[f"max_abs_diff_{key}"] or 0.0) <= ROUNDING for key in SCORE_COLUMNS)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
