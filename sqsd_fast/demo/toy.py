"""The toy demo (``python -m sqsd_fast.demo --toy``): SQSD end to end, offline, in seconds.

Builds a tiny random-weight model with its tokenizer, three LoRA adapters (a benign
"initial" state, a danger direction trained on toy unsafe-compliance lines, a safety
adapter trained on refusals), scores DEMO_RECORDS through the same code path as
`sqsd-fast score`, and cuts the ranking into subsets S1..S5 with a plot. The real demo
(``sqsd_fast.demo.real``) falls back to this when it cannot fetch its model.

THE SCORES MEAN NOTHING: the model has random weights and the adapters see a handful of
lines for a few steps. The demo shows the workflow and the output files, not a result.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from sqsd_fast.app import cli
from sqsd_fast.demo.demo_data import (
    DEMO_BENIGN_STATE_TEXTS,
    DEMO_RECORDS,
    DEMO_REFUSAL_TEXTS,
    DEMO_UNSAFE_COMPLIANCE_TEXTS,
)
from sqsd_fast.io.writers import SCORE_COLUMNS, read_rows, write_rows
from sqsd_fast.models.quiet import quiet_libraries
from sqsd_fast.testing.toy_model import build_toy_assets

BANNER = """\
=============================================================================
 SQSD demo -- a TOY: tiny model with RANDOM weights, adapters trained for a
 few steps on a handful of lines. The scores below MEAN NOTHING; they only
 show what the pipeline does and what it writes.
============================================================================="""

REAL_COMMAND = """\
With a real model, the same pipeline is:
  sqsd-fast score --model PATH/TO/BASE_MODEL \\
      --danger-state PATH/TO/lora_initial --danger-direction PATH/TO/lora_unsafe \\
      --safety-direction PATH/TO/lora_safe \\
      --data train.jsonl --out scores.jsonl --dtype bfloat16 --device cuda
  sqsd-fast subsets --scores scores.jsonl --data train.jsonl --out-dir subsets/"""


def build_assets(out_dir: Path) -> dict[str, Path]:
    """Write model + tokenizer and the three adapters under out_dir; return their paths."""

    # The toy builders' default sizes (hidden 64, 2 layers, 4 heads, LoRA r 4 / alpha 8 on
    # every projection, 4 steps per adapter), trained on the demo's own texts.
    toy = build_toy_assets(out_dir, benign_texts=DEMO_BENIGN_STATE_TEXTS,
                           unsafe_texts=DEMO_UNSAFE_COMPLIANCE_TEXTS,
                           refusal_texts=DEMO_REFUSAL_TEXTS)
    return {"model": Path(toy.model_dir), "danger_state": Path(toy.danger_state),
            "danger_direction": Path(toy.danger_direction), "safety": Path(toy.safety_direction)}


def run(out_dir: Path, *, quiet_progress: bool = True) -> int:
    # The toy model's matrices are tiny (64 wide): one thread avoids thread start-up and
    # oversubscription costs that made the demo ~20x slower on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out_dir, quiet_progress=quiet_progress)
    finally:
        torch.set_num_threads(threads)


def _run(out_dir: Path, *, quiet_progress: bool) -> int:
    start = time.perf_counter()
    print(BANNER)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A rerun starts clean, also after a real-model run in the same directory.
    for name in ("model", "danger_state", "danger_direction", "safety", "subsets", "train"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    (out_dir / "demo_run.json").unlink(missing_ok=True)
    for stale in out_dir.glob("scores.jsonl.*"):
        stale.unlink()                                        # sidecars of a killed run

    print(f"\n[1/3] building the toy model, tokenizer and adapters in {out_dir}/ ...")
    with quiet_libraries():
        paths = build_assets(out_dir)
    data = out_dir / "demo_data.jsonl"
    write_rows(data, DEMO_RECORDS)

    print(f"[2/3] scoring {len(DEMO_RECORDS)} demo instructions (same code as "
          f"'sqsd-fast score') ...\n")
    scores = out_dir / "scores.jsonl"
    argv = ["score", "--model", str(paths["model"]),
            "--danger-state", str(paths["danger_state"]),
            "--danger-direction", str(paths["danger_direction"]),
            "--safety-direction", str(paths["safety"]),
            "--data", str(data), "--out", str(scores), "--batch-size", "8",
            "--max-length", "256", "--backend", "auto"]
    if quiet_progress:
        argv.append("--no-progress")
    rc = cli.main(argv)
    if rc != 0:
        return rc
    write_rows(out_dir / "scores.csv", read_rows(scores), SCORE_COLUMNS)

    print("\n[3/3] cutting the ranking into subsets S1 (riskiest) .. S5 ...\n")
    rc = cli.main(["subsets", "--scores", str(scores), "--data", str(data),
                   "--out-dir", str(out_dir / "subsets"), "--num", "5", "--window", "6"])
    if rc != 0:
        return rc

    print(f"\nWrote {scores}, {out_dir / 'scores.csv'} and {out_dir / 'subsets'}/ "
          f"(S1..S5.jsonl, subsets.png) in {time.perf_counter() - start:.1f} s.")
    print("Reminder: toy model with random weights -- these scores mean nothing.")
    print("(Without --toy, `python -m sqsd_fast.demo` runs the same loop on the real "
          "SmolLM2-135M-Instruct.)\n")
    print(REAL_COMMAND)
    return 0
