"""Per-sample loss weights in training: ``train-adapter --weight-column`` and a mixin for any
``transformers.Trainer`` subclass, TRL's ``SFTTrainer`` included.

    from trl import SFTTrainer
    from sqsd_fast.training.weights import SampleWeightedLoss

    class WeightedSFTTrainer(SampleWeightedLoss, SFTTrainer):
        pass
    # the train dataset carries a "sample_weight" column (e.g. `sqsd-fast filter
    # --weight-column sample_weight`); the rest is SFTTrainer as usual

The loss of a batch is ``sum_s w_s loss_s / sum_s w_s``, where ``loss_s`` is sample s's mean
cross-entropy over its trained tokens (labels != -100): a sample weighs by its weight, not
by its length. (Without weights, a Trainer averages over all tokens of the batch, so long
samples weigh more; a weight of 1 everywhere is therefore not quite the unweighted loss.)
A batch whose weights are all 0 adds nothing. With gradient accumulation the Trainer
averages the micro-batches' losses. The weight survives the collator: TRL's collators and
the Trainer's column pruning drop fields the model does not take, so the mixin keeps the
weight column and puts it back beside the collated batch (``sample_fields.py``).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from sqsd_fast.training.sample_fields import SAMPLE_INDEX, SAMPLE_WEIGHT, SampleFields

IGNORE_INDEX = -100


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean next-token cross-entropy over each row's trained tokens (0 where none)."""
    targets = labels[:, 1:]
    flat = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape)
    mask = targets != IGNORE_INDEX
    return (flat * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum w_s loss_s / sum w_s`` (0, with a gradient of zeros, when every weight is 0)."""
    losses = per_sample_loss(logits, labels)
    w = weights.to(device=losses.device, dtype=losses.dtype)
    return (w * losses).sum() / w.sum().clamp(min=torch.finfo(losses.dtype).tiny)


class SampleWeightedLoss(SampleFields):
    """Mixin, first in the bases of a ``transformers.Trainer`` subclass: the loss
    ``sum w_s loss_s / sum w_s`` with ``w`` from the ``sample_weight`` column (1 where the
    batch has none). See the module docstring."""

    sample_fields = (SAMPLE_INDEX, SAMPLE_WEIGHT)
    loss_is_scaled_for_ga = False      # a per-batch mean: the Trainer divides by the GA steps

    def loss_with_fields(self, model, inputs, fields, return_outputs, num_items_in_batch):
        labels = inputs.pop("labels")
        outputs = model(**{k: v for k, v in inputs.items() if k in _MODEL_INPUTS})
        weights = fields.get(SAMPLE_WEIGHT)
        if weights is None:
            weights = torch.ones(labels.shape[0])
        loss = weighted_loss(outputs.logits, labels, weights)
        return (loss, outputs) if return_outputs else loss


# What collators put beside the model's inputs that the model must not be given
# (e.g. TRL's completion_mask, already folded into its labels).
_MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "token_type_ids", "inputs_embeds")


def read_weights(rows: Sequence[Mapping], column: str, where: str) -> list[float]:
    """The ``column`` of every row as a weight: finite, >= 0, not all 0; else a one-line
    ``ValueError`` naming ``where`` (the option and file) and the record."""
    out = []
    for i, row in enumerate(rows):
        if column not in row or row[column] is None or row[column] == "":
            raise ValueError(f"{where}: record {i} has no {column!r} field (columns: "
                             f"{', '.join(sorted(row))}); give every record a weight")
        try:
            w = float(row[column])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: record {i} has {column} = {row[column]!r}, not a number") from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"{where}: record {i} has {column} = {w!r}; weights must be finite and >= 0")
        out.append(w)
    if out and not any(out):
        raise ValueError(f"{where}: every {column} is 0; nothing would be trained on")
    return out
