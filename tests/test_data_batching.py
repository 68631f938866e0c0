"""Length-bucketed batching and right-padded collation."""
from __future__ import annotations

import random

import pytest
import torch

from sqsd_fast.data.batching import collate, length_bucketed_batches
from sqsd_fast.data.tokenize import TokenizedSample, count_response_tokens


def _sample(index, n, n_prompt=2):
    ids = [(7 * index + t) % 50 + 3 for t in range(n)]
    labels = [-100] * min(n_prompt, n) + ids[n_prompt:]
    return TokenizedSample(index, ids, labels, False, n, count_response_tokens(labels))


def _samples(lengths):
    return [_sample(i, n) for i, n in enumerate(lengths)]


def test_batches_cover_every_sample_once_sorted_by_length():
    rng = random.Random(0)
    samples = _samples([rng.randint(1, 40) for _ in range(23)])
    batches = length_bucketed_batches(samples, 5)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    flat = [s.index for b in batches for s in b]
    assert sorted(flat) == list(range(23))
    lengths = [s.n_tokens for b in batches for s in b]
    assert lengths == sorted(lengths, reverse=True)          # longest batch first
    shuffled = samples[:]
    rng.shuffle(shuffled)
    again = length_bucketed_batches(shuffled, 5)             # input order does not matter
    assert [[s.index for s in b] for b in again] == [[s.index for s in b] for b in batches]


def test_ties_are_broken_by_index_and_padding_is_small():
    samples = _samples([4, 9, 4, 9, 4, 1])
    batches = length_bucketed_batches(samples, 2)
    assert [[s.index for s in b] for b in batches] == [[1, 3], [0, 2], [4, 5]]
    padded = sum(max(s.n_tokens for s in b) * len(b) for b in batches)
    assert padded - sum(s.n_tokens for s in samples) == 3


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        length_bucketed_batches(_samples([3]), bad)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_token_budget_bounds_padded_tokens_and_keeps_every_sample(batch_size):
    rng = random.Random(1)
    samples = _samples([rng.randint(1, 60) for _ in range(41)])
    budget = 97
    batches = length_bucketed_batches(samples, batch_size, max_tokens=budget)
    assert sorted(s.index for b in batches for s in b) == list(range(41))
    for b in batches:
        assert len(b) * max(s.n_tokens for s in b) <= budget        # padding included
        if batch_size is not None:
            assert len(b) <= batch_size
    # Greedy: a batch is closed only when one more sample would break a limit.
    for b, nxt in zip(batches, batches[1:]):
        full = batch_size is not None and len(b) == batch_size
        assert full or (len(b) + 1) * b[0].n_tokens > budget
    # Short samples share a batch, long ones do not: the sample count varies.
    assert len({len(b) for b in batches}) > 2


def test_token_budget_smaller_than_the_longest_sample_names_it():
    samples = _samples([5, 30, 12])
    with pytest.raises(ValueError, match=r"max_tokens 20 is smaller than sample 1 \(30 "
                                         r"tokens\); use max_tokens 30 or more"):
        length_bucketed_batches(samples, 4, max_tokens=20)
    assert [[s.index for s in b] for b in length_bucketed_batches(samples, None, max_tokens=30)] \
        == [[1], [2, 0]]


def test_batching_needs_a_limit():
    with pytest.raises(ValueError, match="batch_size, max_tokens or both"):
        length_bucketed_batches(_samples([3]), None)


def test_collate_right_pads():
    batch = _samples([5, 2, 3])
    out = collate(batch, pad_token_id=0)
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    assert all(t.shape == (3, 5) and t.dtype == torch.long for t in out.values())
    for row, s in enumerate(batch):
        n = s.n_tokens
        assert out["input_ids"][row, :n].tolist() == s.input_ids
        assert out["labels"][row, :n].tolist() == s.labels
        assert out["attention_mask"][row].tolist() == [1] * n + [0] * (5 - n)
        assert out["input_ids"][row, n:].eq(0).all() and out["labels"][row, n:].eq(-100).all()


def test_collate_rejects_empty_batch_and_bad_pad():
    with pytest.raises(ValueError, match="at least one sample"):
        collate([], 0)
    with pytest.raises(ValueError, match="pad_token_id"):
        collate(_samples([2]), None)
