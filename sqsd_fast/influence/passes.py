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

import inspect

import torch
import torch.nn.functional as F

from sqsd_fast.choices import check_positive_int
from sqsd_fast.data.batching import collate, length_bucketed_batches
from sqsd_fast.data.tokenize import IGNORE_INDEX
from sqsd_fast.influence.capture import TapSession
from sqsd_fast.influence.reducers import BatchLayout


def batches(samples, batch_size: int, progress: bool):
    """Length-bucketed batches (longest first), with an optional progress bar."""
    chunks = length_bucketed_batches(samples, check_positive_int("batch_size", batch_size))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(samples), unit="samples", desc="gradients", dynamic_ncols=True)
    try:
        for batch in chunks:
            yield batch
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()


class BatchRunner:
    """Runs batches of one PeftModel at one adapter, borrowing the model per batch
    (``settings``: a ``ModelSettings``; ``modules``: {name: LoRA layer} of the adapter)."""

    def __init__(self, peft_model, adapter: str, modules: dict, settings, pad_token_id: int):
        self.model, self.adapter, self.modules, self.settings = peft_model, adapter, modules, settings
        self.pad_token_id = pad_token_id
        self.device = next(peft_model.parameters()).device
        base = peft_model.get_base_model()
        self._keeps_logits = "logits_to_keep" in inspect.signature(base.forward).parameters

    def run(self, samples, reducer, weights=None) -> list[bool]:
        """One forward + backward of ``samples`` (each with a response token); the loss is
        ``sum_s w_s * mean CE_s`` (w = 1 unless given). Returns a finite-loss flag per sample."""
        batch = collate(samples, self.pad_token_id)
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        n, width = ids.shape
        lengths = mask.sum(dim=1)
        cu_seqlens = torch.zeros(n + 1, dtype=torch.long)
        cu_seqlens[1:] = torch.cumsum(lengths, dim=0)
        # Built on the host from the host-side batch, so the device never waits mid-batch.
        rows = torch.nonzero(mask.reshape(-1)).squeeze(1) if int(lengths.min()) < width else None
        valid = labels[:, 1:] != IGNORE_INDEX               # position t predicts labels[:, t + 1]
        keep = torch.nonzero(valid.any(dim=0)).squeeze(1)   # logits only where some sample has a target
        targets, n_targets = labels[:, 1:].index_select(1, keep), valid.sum(dim=1)
        w = torch.ones(n, dtype=torch.float64) if weights is None else torch.tensor(weights, dtype=torch.float64)
        ids, mask, cu_seqlens, rows, keep, targets, n_targets, w = (
            None if t is None else t.to(self.device) for t in (ids, mask, cu_seqlens, rows, keep, targets, n_targets, w))
        reducer.start(BatchLayout(rows, cu_seqlens, mask))
        with self.settings.scoring(self.adapter), torch.enable_grad(), \
                TapSession(list(self.modules.items()), self.adapter, reducer):
            embeds = self.model.get_input_embeddings()(ids).detach().requires_grad_(True)
            kwargs = dict(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
            if self._keeps_logits:
                kwargs["logits_to_keep"] = keep
            logits = self.model(**kwargs).logits
            if not self._keeps_logits:
                logits = logits.index_select(1, keep)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))   # float64 models stay float64
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="none").view(n, -1)
            per_sample = ce.sum(dim=1) / n_targets
            torch.autograd.grad((per_sample * w.to(per_sample.dtype)).sum(), embeds)
        return torch.isfinite(per_sample.detach()).cpu().tolist()
