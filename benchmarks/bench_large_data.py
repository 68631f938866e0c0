"""Scoring a large data set: peak memory per 100k samples and the pipeline's own share of the time.

Generated instruction records (words of the toy corpus, prompts of 5-20 words, responses of
5-60 words, seeded) are scored by `sqsd_fast.app.pipeline.score_file`, as `sqsd-fast score`
does, each size in a fresh process (peak RSS is a process's high-water mark):
  toy      the toy model (hidden 64, 2 layers) and its three adapters: the model costs
           little, so what the pipeline itself costs (reading, tokenizing, batching,
           sidecars, ranking, writing) shows
  fake     no model at all (the test suite's stand-in scorer): the pipeline alone, so its
           memory per sample and its time show at any size in minutes
  smollm2  SmolLM2-135M-Instruct with a fresh LoRA state and the shipped anchors'
           directions (the zero-configuration default; --sizes 20000 as the issue asks)
Reported per size: peak RSS, RSS before scoring, the growth per 100k samples against the
smallest size, wall time, the time inside the scorer's batches (forward, backward and
reductions: what is not the pipeline's), the model loading time, and the pipeline's own
share = (wall - scorer - loading) / wall. Goals (issue #29, reported, not asserted): a
small RSS growth per 100k samples, the pipeline's own share under 5%.

Resumable: each size works in its own folder under --work-root (data, scores, the run's
resume sidecars, and one timing file per process that worked on it, rewritten every
--heartbeat seconds). Stopped part-way (a session's end), the same command continues with
`score --resume` and, once the size is finished, reports the sum of the segments' times
(model loading and the re-reading of the data on each restart included: what a resumed
run costs) and the largest segment's peak RSS. A killed segment loses at most one
heartbeat of timing. A finished size is not scored again (delete its folder to redo it).

    python benchmarks/bench_large_data.py                          # toy, 10k and 100k
    python benchmarks/bench_large_data.py --model fake --sizes 10000,100000
    python benchmarks/bench_large_data.py --model smollm2 --sizes 20000
    python benchmarks/bench_large_data.py --smoke
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]

from paths import RESULTS_DIR  # noqa: E402

RESULTS = RESULTS_DIR / "large_data.jsonl"
WORK_ROOT = Path.home() / ".cache" / "sqsd_fast" / "bench_large_data"
SEGMENTS = "segments"      # one timing file per process that scored part of a size
SUMMED = ("wall_s", "scorer_s", "load_s")


def write_records(path: Path, n: int, seed: int = 0) -> None:
    """n generated records, the same for the same n and seed (written once per size)."""
    from sqsd_fast.io.atomic import atomic_path
    from sqsd_fast.testing.toy_model import TOY_CORPUS
    words = " ".join(TOY_CORPUS).split()
    rng = random.Random(seed)
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        for _ in range(n):
            prompt = " ".join(rng.choices(words, k=rng.randint(5, 20)))
            response = " ".join(rng.choices(words, k=rng.randint(5, 60)))
            handle.write(json.dumps({"instruction": prompt, "response": response}) + "\n")


def model_options(model: str, work: Path) -> dict:
    """score_file's model and adapter options; the toy and fake assets built once per folder
    (a resumed run must see the same adapter files, or the sidecars are refused)."""
    from sqsd_fast.app import pipeline
    if model == "fake":   # the pipeline alone: the test suite's stand-in scorer, no model
        from sqsd_fast.testing.fake_scorer import FakeScorer, make_workspace
        root = work / "fake"
        if not (root / "safety").exists():
            workspace = make_workspace(root, records=[])
        else:
            workspace = {name: root / name for name in ("model", "danger_state", "danger_direction", "safety")}
        pipeline.load_scorer = lambda options: FakeScorer()
        return dict(model=str(workspace["model"]), danger_state=str(workspace["danger_state"]),
                    danger_direction=str(workspace["danger_direction"]), safety_direction=str(workspace["safety"]))
    if model == "toy":
        from sqsd_fast.testing.toy_model import build_toy_assets
        root = work / "toy"
        if not (root / "built").exists():
            build_toy_assets(root)
            (root / "built").write_text("")
        return dict(model=str(root / "model"), danger_state=str(root / "danger_state"),
                    danger_direction=str(root / "danger_direction"), safety_direction=str(root / "safety"))
    return dict(model=model)


class Segment:
    """This process's timing of its part of a size, rewritten to its file every ``heartbeat``
    seconds and at the end, so a process killed part-way leaves what it measured."""

    def __init__(self, work: Path, heartbeat: float):
        from common import _read_status_kb   # /proc/self/status, in kB
        self.read_kb = _read_status_kb
        self.path = work / SEGMENTS / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.heartbeat, self.last_write = heartbeat, 0.0
        self.values = {"scorer_s": 0.0, "load_s": 0.0, "batches": 0, "finished": False,
                       "rss_before_mb": round(self.read_kb("VmRSS") / 1024, 1)}
        self.start = time.perf_counter()

    def write(self, force: bool = False) -> dict:
        from sqsd_fast.io.atomic import atomic_write_text
        now = time.perf_counter()
        if not force and now - self.last_write < self.heartbeat:
            return self.values
        self.last_write = now
        self.values.update(wall_s=round(now - self.start, 2), peak_rss_mb=round(self.read_kb("VmHWM") / 1024, 1))
        atomic_write_text(self.path, json.dumps(self.values))
        return self.values


def one_run(model: str, n: int, work: Path, heartbeat: float = 30.0, kill_after: int | None = None) -> dict:
    """Score (or go on scoring) the n generated records of ``work`` in this process; its
    segment's measurements. ``kill_after``: SIGKILL this process after that many batches
    (the tests' stand-in for a session's end)."""
    from sqsd_fast.app import pipeline
    data = work / "data.jsonl"
    if not data.exists():
        write_records(data, n)
    kwargs = model_options(model, work)
    segment = Segment(work, heartbeat)
    real_load, real_iterate = pipeline.load_scorer, pipeline._iterate

    def timed_load(options):
        start = time.perf_counter()
        try:
            return real_load(options)
        finally:
            segment.values["load_s"] += time.perf_counter() - start

    def timed_iterate(*args, **kwargs):
        batches = iter(real_iterate(*args, **kwargs))
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                segment.values["scorer_s"] += time.perf_counter() - start
                return
            segment.values["scorer_s"] += time.perf_counter() - start
            segment.values["batches"] += 1
            yield batch
            segment.write()   # after the batch is in the sidecar
            if kill_after is not None and segment.values["batches"] >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    pipeline.load_scorer, pipeline._iterate = timed_load, timed_iterate
    result = pipeline.score_file(**kwargs, data=str(data), out=str(work / "scores.jsonl"), quiet=True, resume=True)
    segment.values.update(finished=True, n_resumed=result.n_resumed,
                          scored=sum(r["status"] == "ok" for r in result.rows),
                          tokens=sum(r["n_tokens"] for r in result.rows))
    return segment.write(force=True)


def combine(model: str, n: int, work: Path) -> dict:
    """A finished size's row from its segments: times summed, the largest peak."""
    segments = [json.loads(p.read_text()) for p in sorted((work / SEGMENTS).glob("*.json"))]
    last = segments[-1]
    row = {"model": model, "samples": n, "scored": last["scored"], "tokens": last["tokens"],
           "peak_rss_mb": max(s["peak_rss_mb"] for s in segments), "rss_before_mb": segments[0]["rss_before_mb"],
           **{k: round(sum(s[k] for s in segments), 2) for k in SUMMED}, "segments": len(segments)}
    own = row["wall_s"] - row["scorer_s"] - row["load_s"]
    row.update(pipeline_own_s=round(own, 2), pipeline_own_share=round(own / row["wall_s"], 4))
    return row


def finished(work: Path) -> bool:
    return any(json.loads(p.read_text()).get("finished") for p in (work / SEGMENTS).glob("*.json"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy", help="toy, fake, or a model for --model (e.g. smollm2)")
    parser.add_argument("--sizes", default=None, help="comma list of record counts (default 10000,100000)")
    parser.add_argument("--smoke", action="store_true", help="200 and 400 records: checks the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON lines appended here")
    parser.add_argument("--work-root", type=Path, default=None,
                        help=f"one resumable folder per size under it (default {WORK_ROOT}; --smoke: a temporary one)")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="seconds between timing-file updates")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--kill-after", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_run(args.model, args.one, args.work, args.heartbeat, args.kill_after)))
        return 0
    sizes = [200, 400] if args.smoke else [int(s) for s in (args.sizes or "10000,100000").split(",")]
    from common import env_facts
    import torch
    facts = env_facts(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as scratch:
        root = args.work_root or (Path(scratch) if args.smoke else WORK_ROOT)
        rows = [run_size(args, n, root / f"{Path(args.model).name}-{n}") for n in sizes]
    report(rows, args.out, facts, "smoke" if args.smoke else "full")
    return 0


def run_size(args, n: int, work: Path) -> dict:
    """Score size n in a fresh process, unless its folder holds a finished run; its row."""
    work.mkdir(parents=True, exist_ok=True)
    if finished(work):
        print(f"{n} records: finished earlier in {work}; its segments are reported", flush=True)
    else:
        if (work / SEGMENTS).exists():
            print(f"{n} records: continuing the run in {work}", flush=True)
        done = subprocess.run([sys.executable, __file__, "--model", args.model, "--one", str(n), "--work", str(work),
                               "--heartbeat", str(args.heartbeat)]
                              + ([] if args.kill_after is None else ["--kill-after", str(args.kill_after)]),
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{n} records failed (rerun to continue from {work}):\n{done.stderr[-3000:]}")
    return combine(args.model, n, work)


def report(rows: list[dict], out: Path, facts: dict, mode: str) -> None:
    base = rows[0]
    print(f"{'samples':>8} {'peak RSS MB':>11} {'before MB':>9} {'MB/100k':>8} {'wall s':>8} {'scorer s':>8} "
          f"{'load s':>7} {'own share':>9} {'segments':>8}")
    for row in rows:
        growth = ((row["peak_rss_mb"] - base["peak_rss_mb"]) / (row["samples"] - base["samples"]) * 1e5
                  if row is not base else float("nan"))
        row["rss_growth_mb_per_100k"] = round(growth, 1) if row is not base else None
        print(f"{row['samples']:>8} {row['peak_rss_mb']:>11.0f} {row['rss_before_mb']:>9.0f} {growth:>8.0f} "
              f"{row['wall_s']:>8.1f} {row['scorer_s']:>8.1f} {row['load_s']:>7.1f} {row['pipeline_own_share']:>9.2%} "
              f"{row['segments']:>8}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as handle:
        for row in rows:
            handle.write(json.dumps({**facts, **row, "mode": mode}) + "\n")
    print(f"appended {len(rows)} rows to {out}")


if __name__ == "__main__":
    sys.exit(main())
