"""One forward + backward of a batch at the state, with the capture hooks on.

The loss is the scoring engine's (sqsd_fast/scoring/engine.py, docs/METHOD.md §1): the sum
over samples of each sample's mean response-token cross-entropy (causal shift, -100 labels
masked). Samples do not interact inside a batch (attention is per row, the base weights
are frozen), so each gets exactly its batch-1 gradient. Optional per-sample loss weights
``w_s`` turn the query side's summed gradient into a weighted sum (a mean, or a sum of
normalized gradients) at no extra cost. Gradients are taken with respect to the input
embeddings only: the hooks capture everything else, and no parameter ``.grad`` is written.
"""
from __future__ import annotations


import torch

from sqsd_fast.choices import check_positive_int
from sqsd_fast.scoring.taps import TapSession
from sqsd_fast.influence.reducers import BatchLayout
from sqsd_fast.scoring.batch_pass import (pack_batch, progress_batches, response_loss,
                                          loss_head)


def batches(samples, batch_size: int, progress: bool, max_tokens: int | None = None):
    """Length-bucketed batches (longest first), with an optional progress bar."""
    return progress_batches(samples, check_positive_int("batch_size", batch_size), progress, "gradients",
                            max_tokens)


class BatchRunner:
    """Runs batches of one PeftModel at one adapter, borrowing the model per batch
    (``settings``: a ``ModelSettings``; ``modules``: {name: LoRA layer} of the adapter)."""

    def __init__(self, peft_model, adapter: str, modules: dict, settings, pad_token_id: int):
        self.model, self.adapter, self.modules, self.settings = peft_model, adapter, modules, settings
        self.pad_token_id = pad_token_id
        self.device = next(peft_model.parameters()).device
        self._loss_head = loss_head(peft_model)

    def run(self, samples, reducer, weights=None) -> list[bool]:
        """One forward + backward of ``samples`` (each with a response token); the loss is
        ``sum_s w_s * mean CE_s`` (w = 1 unless given). Returns a finite-loss flag per sample."""
        batch = pack_batch(samples, self.pad_token_id, self.device)
        w = torch.ones(batch.size, dtype=torch.float64) if weights is None \
            else torch.tensor(weights, dtype=torch.float64)
        reducer.start(BatchLayout(batch.rows, batch.cu_seqlens, batch.mask))
        with self.settings.scoring(self.adapter), torch.enable_grad(), \
                TapSession(list(self.modules.items()), self.adapter, reducer):
            embeds = self.model.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
            per_sample = response_loss(self.model, embeds, batch, self._loss_head)
            torch.autograd.grad((per_sample * w.to(per_sample.device, per_sample.dtype)).sum(), embeds)
        return torch.isfinite(per_sample.detach()).cpu().tolist()
