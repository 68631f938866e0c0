"""One batch through the model: packing, the response-token loss, and the batch loop.

Shared by the SQSD engine (``engine.py``) and the influence passes
(``sqsd_fast/influence/passes.py``): both take each sample's mean cross-entropy over its
response tokens (causal shift, -100 labels masked) and need the packing of the batch's
real tokens for the kernels (docs/METHOD.md §1, §5).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sqsd_fast.data.batching import collate, length_bucketed_batches
from sqsd_fast.data.tokenize import IGNORE_INDEX


@dataclass
class PackedBatch:
    """A right-padded batch and its packing, on the model's device.

    ``rows``: indices of the real tokens in the flattened (B*L) batch (None: no padding);
    ``cu_seqlens`` (B+1,): sample offsets into them; ``keep``: positions where some sample
    has a target (logits are needed only there); ``targets`` (B, len(keep)): their labels;
    ``n_targets`` (B,): response tokens per sample.
    """

    input_ids: torch.Tensor
    mask: torch.Tensor
    rows: torch.Tensor | None
    cu_seqlens: torch.Tensor
    keep: torch.Tensor
    targets: torch.Tensor
    n_targets: torch.Tensor

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]


def pack_batch(samples, pad_token_id: int, device) -> PackedBatch:
    """Collate ``samples`` and build every index on the host, so the device never waits
    for the host mid-batch; then one copy to ``device``."""
    batch = collate(samples, pad_token_id)
    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    n, width = input_ids.shape
    lengths = mask.sum(dim=1)
    cu_seqlens = torch.zeros(n + 1, dtype=torch.long)
    cu_seqlens[1:] = torch.cumsum(lengths, dim=0)
    # Packing drops padding rows; cu_seqlens is built here, so the ops skip value checks.
    rows = torch.nonzero(mask.reshape(-1)).squeeze(1) if int(lengths.min()) < width else None
    valid = labels[:, 1:] != IGNORE_INDEX          # position t predicts labels[:, t + 1]
    keep = torch.nonzero(valid.any(dim=0)).squeeze(1)
    to_dev = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
    return PackedBatch(to_dev(input_ids), to_dev(mask), to_dev(rows), to_dev(cu_seqlens),
                       to_dev(keep), to_dev(labels[:, 1:].index_select(1, keep)),
                       to_dev(valid.sum(dim=1)))


def takes_logits_to_keep(peft_model) -> bool:
    """Whether the model's forward can compute logits at chosen positions only."""
    import inspect
    return "logits_to_keep" in inspect.signature(peft_model.get_base_model().forward).parameters


def response_loss(model, embeds: torch.Tensor, batch: PackedBatch, keeps_logits: bool) -> torch.Tensor:
    """(B,) each sample's mean cross-entropy over its response tokens; logits are taken
    only at ``batch.keep`` (through ``logits_to_keep`` where the model supports it)."""
    kwargs = dict(inputs_embeds=embeds, attention_mask=batch.mask, use_cache=False)
    if keeps_logits:
        kwargs["logits_to_keep"] = batch.keep
    logits = model(**kwargs).logits
    if not keeps_logits:
        logits = logits.index_select(1, batch.keep)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float64 stays float64
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1),
                         ignore_index=IGNORE_INDEX, reduction="none").view(batch.size, -1)
    return ce.sum(dim=1) / batch.n_targets


def progress_batches(samples, batch_size: int | None, progress: bool, desc: str,
                     max_tokens: int | None = None):
    """Length-bucketed batches (longest first; at most ``batch_size`` samples and
    ``max_tokens`` padded tokens each), with a progress bar counting samples."""
    batches = length_bucketed_batches(samples, batch_size, max_tokens)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(samples), unit="samples", desc=desc, dynamic_ncols=True)
    try:
        for batch in batches:
            yield batch
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
