"""What a finished ``train-adapter`` run reports: the result object, the per-epoch losses
read from the Trainer's log history, the saved summary and its terminal form."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sqsd_fast.options.train_adapter import TrainAdapterOptions
from sqsd_fast.training.outdir import SUMMARY


@dataclass
class TrainResult:
    """A finished run: what was trained, on what, and how the loss went."""

    options: TrainAdapterOptions
    out: str                          # the finished peft adapter directory
    lora: dict                        # r, lora_alpha, lora_dropout, target_modules used
    epoch_losses: list[float]         # mean training loss of each epoch, in order
    final_loss: float | None          # the last epoch's mean loss
    n_samples: int                    # samples trained on
    n_skipped: int                    # samples without a response token, left out
    n_truncated: int
    n_trainable_params: int
    global_step: int                  # optimizer steps in total
    runtime_s: float                  # this call (a resumed run: since the resume)
    resumed_from: str | None          # the checkpoint a resumed run started from
    merged_to: str | None
    loss_log: list[dict] = field(default_factory=list)   # {step, epoch, loss} as logged
    # --monitor-direction: settings, the last measurement ("final": step, epoch,
    # update_norm, <name>_proj, <name>_cos), thresholds reached, files (None without it)
    drift: dict | None = None
    # --online-score: directions, rows written, where, and each epoch's Spearman with the
    # scores at the start weights (None without it)
    online: dict | None = None

    @property
    def summary_path(self) -> str:
        return str(Path(self.out) / SUMMARY)


def epoch_losses(history: list[dict]) -> list[float]:
    """Mean loss of each epoch from the Trainer's loss logs.

    A log entry holds the mean loss of the optimizer steps since the previous entry; epoch
    k's entries have ``epoch`` in (k-1, k]. The epoch mean weights each entry by its steps.
    After a resume in the middle of an epoch the steps run before the interruption are
    not in the logs (the Trainer does not checkpoint its running loss); that epoch's mean
    is then over the steps logged.
    """
    sums: dict[int, list[float]] = {}
    previous_step = 0
    for entry in history:
        epoch = max(1, math.ceil(entry["epoch"] - 1e-9))
        steps = max(entry["step"] - previous_step, 1)
        previous_step = entry["step"]
        total = sums.setdefault(epoch, [0.0, 0.0])
        total[0] += entry["loss"] * steps
        total[1] += steps
    return [s / n for _, (s, n) in sorted(sums.items())]


def summary_dict(result: TrainResult) -> dict:
    import peft
    import transformers
    summary = {k: v for k, v in vars(result).items() if k != "options"}
    summary["options"] = result.options.to_dict()
    summary["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                           "peft": peft.__version__}
    return summary


def format_summary(result: TrainResult) -> str:
    """What a finished training run did, in a few lines for the terminal."""
    lora = result.lora
    modules = str(lora["target_modules"])
    if len(modules) > 40:     # an init adapter's own list of full module paths
        modules = f"{len(modules.split(','))} modules"
    lines = [f"LoRA adapter written to {result.out} (r={lora['r']}, alpha="
             f"{lora['lora_alpha']:g}, {modules}; {result.n_trainable_params:,} trainable "
             f"parameters)"]
    skipped = f", {result.n_skipped} without a response token left out" if result.n_skipped else ""
    lines.append(f"samples: {result.n_samples} trained on{skipped}, {result.n_truncated} "
                 f"truncated to {result.options.max_length} tokens")
    if result.epoch_losses:
        per_epoch = ", ".join(f"{x:.4f}" for x in result.epoch_losses)
        lines.append(f"training loss per epoch: {per_epoch} (final {result.final_loss:.4f})")
    resumed = f", resumed from {Path(result.resumed_from).name}" if result.resumed_from else ""
    lines.append(f"{result.global_step} optimizer steps in {result.runtime_s:.1f} s{resumed}")
    if result.drift and result.drift["final"]:
        lines.append(_drift_line(result.drift))
    if result.merged_to:
        lines.append(f"merged model written to {result.merged_to}")
    lines.append(f"summary: {result.summary_path}")
    return "\n".join(lines)


def _drift_line(drift: dict) -> str:
    final = drift["final"]
    parts = [f"{name} proj {final[name + '_proj']:+.4g} (cos {final[name + '_cos']:+.3f})"
             for name in drift["directions"]]
    line = (f"drift at step {final['step']}: update norm {final['update_norm']:.4g}; "
            + ", ".join(parts) + f" ({drift['csv']})")
    for name, step in drift["triggered"].items():
        line += f"\n{name} proj reached {drift['threshold'][name]:g} at step {step}"
        if drift["stopped_at"] == step:
            line += "; training stopped there"
    return line
