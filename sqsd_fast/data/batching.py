"""Length-bucketed batches and right-padded collation.

Sorting by length before batching keeps padding small (docs/METHOD.md §5). Batches go longest
first, so an out-of-memory batch size shows up on the first batch rather than the last.
"""
from __future__ import annotations

from array import array
from typing import Sequence

import torch

from sqsd_fast.choices import check_positive_int
from sqsd_fast.data.tokenize import IGNORE_INDEX, TokenizedSample


def length_bucketed_batches(samples: Sequence[TokenizedSample], batch_size: int | None,
                            max_tokens: int | None = None) -> list[list[TokenizedSample]]:
    """Split samples into batches of similar length: at most ``batch_size`` samples and,
    with ``max_tokens``, at most that many tokens counted with padding (batch size x its
    longest sample). At least one of the two must be given.

    Deterministic: samples are ordered by (descending n_tokens, ascending index), then
    cut greedily into consecutive batches; the same input always gives the same batches.
    A token budget packs many short samples together and few long ones, so memory stays
    level across a data set of mixed lengths where a fixed sample count would not.
    """
    if batch_size is None and max_tokens is None:
        raise ValueError("give batch_size, max_tokens or both")
    check_positive_int("batch_size", batch_size, optional=True)
    check_token_budget(samples, max_tokens, "max_tokens")
    ordered = sorted(samples, key=lambda s: (-s.n_tokens, s.index))
    if max_tokens is None:
        return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    batches: list[list[TokenizedSample]] = []
    for sample in ordered:
        current = batches[-1] if batches else None
        # Descending order: the batch's first sample is its longest, so the padded size
        # after adding one more is (len + 1) x that length.
        if (current is None or (batch_size is not None and len(current) >= batch_size)
                or (len(current) + 1) * current[0].n_tokens > max_tokens):
            batches.append([sample])
        else:
            current.append(sample)
    return batches


def check_token_budget(samples: Sequence[TokenizedSample], max_tokens: int | None,
                       option: str = "--max-tokens") -> None:
    """Refuse a token budget smaller than the longest sample, naming it and what fits."""
    check_positive_int(option, max_tokens, optional=True)
    if max_tokens is None or not samples:
        return
    longest = max(samples, key=lambda s: (s.n_tokens, -s.index))
    if longest.n_tokens > max_tokens:
        raise ValueError(f"{option} {max_tokens} is smaller than sample {longest.index} "
                         f"({longest.n_tokens} tokens); use {option} {longest.n_tokens} or "
                         f"more, or --max-length {max_tokens} to cut the samples to the budget")


def pad_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad id, else its eos id (Llama has no
    pad token), else 0. Any id is correct (padding is masked in attention and -100 in the
    labels); a real token only avoids surprises. The one rule for scoring, influence and
    training (``tokenizer`` may be None: 0)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return 0


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
        input_ids[row, :n] = _as_tensor(s.input_ids)
        labels[row, :n] = _as_tensor(s.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _as_tensor(values) -> torch.Tensor:
    """A sample's ids or labels as a tensor: 32-bit arrays (TokenIds) without a copy through
    Python ints, lists and tuples as given."""
    if isinstance(values, array) and len(values):
        return torch.frombuffer(values, dtype=torch.int32)
    return torch.tensor(values, dtype=torch.long)
