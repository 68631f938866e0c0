"""Length-bucketed batches and right-padded collation.

Sorting by length before batching keeps padding small (docs/METHOD.md §5). Batches go longest
first, so an out-of-memory batch size shows up on the first batch rather than the last.
"""
from __future__ import annotations

from typing import Sequence

import torch

from sqsd_fast.choices import check_positive_int
from sqsd_fast.data.tokenize import IGNORE_INDEX, TokenizedSample


def length_bucketed_batches(samples: Sequence[TokenizedSample],
                            batch_size: int) -> list[list[TokenizedSample]]:
    """Split samples into batches of at most `batch_size` samples of similar length.

    Deterministic: samples are ordered by (descending n_tokens, ascending index), then
    cut into consecutive batches; the same input always gives the same batches.
    """
    check_positive_int("batch_size", batch_size)
    ordered = sorted(samples, key=lambda s: (-s.n_tokens, s.index))
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def collate(batch: Sequence[TokenizedSample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch into (B, L) int64 tensors.

    Returns input_ids (padding = pad_token_id), attention_mask (1 on real tokens) and
    labels (-100 on padding), where L is the longest sample in the batch.
    """
    if not batch:
        raise ValueError("collate needs at least one sample")
    if pad_token_id is None or isinstance(pad_token_id, bool) or pad_token_id < 0:
        raise ValueError(f"pad_token_id must be a non-negative token id, got "
                         f"{pad_token_id!r}")
    width = max(len(s.input_ids) for s in batch)
    input_ids = torch.full((len(batch), width), int(pad_token_id), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, s in enumerate(batch):
        n = len(s.input_ids)
        if len(s.labels) != n:
            raise ValueError(f"sample {s.index}: {n} input_ids but {len(s.labels)} labels")
        input_ids[row, :n] = torch.tensor(s.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(s.labels, dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
