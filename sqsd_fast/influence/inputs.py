"""Samples for the influence API: the scorer's accepted inputs, checked and named by role.

Every verb takes what ``SQSDScorer.score`` takes (a data file path, ``Record``s,
``TokenizedSample``s, dicts with ``input_ids`` and ``labels``; sqsd_fast/engine/samples.py).
Errors name the role of the set ("training samples", "query 'harmful'", ...), since one
call can involve several sets. ``limit_response_tokens`` keeps the loss on the first N
response tokens only (He et al. 2024 take gradients on the first 10).
"""
from __future__ import annotations

from sqsd_fast.data.tokenize import DEFAULT_MAX_LENGTH, IGNORE_INDEX, count_response_tokens
from sqsd_fast.engine.samples import DictSample, as_samples, check_fits_model


def prepare_samples(samples, tokenizer, model, *, role: str, max_length: int = DEFAULT_MAX_LENGTH) -> list:
    """Tokenized samples (input order), every id inside ``model``'s vocabulary and context."""
    try:
        out = as_samples(samples, tokenizer, max_length=max_length)
        check_fits_model(out, model)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{role}: {exc}") from None
    return out


def limit_response_tokens(sample, n: int | None):
    """``sample`` with the loss on its first ``n`` response tokens (loss positions, after the
    causal shift) and the sequence cut after the last of them: later tokens cannot change
    those logits (causal attention), so cutting is exact and saves their compute."""
    if n is None:
        return sample
    labels, kept, last = list(sample.labels), 0, None
    for j in range(1, len(labels)):
        if labels[j] != IGNORE_INDEX:
            if kept < n:
                kept, last = kept + 1, j
            else:
                labels[j] = IGNORE_INDEX
    if last is None or last + 1 == len(labels) and kept == count_response_tokens(sample.labels):
        return sample
    return DictSample(sample.index, sample.input_ids[:last + 1], labels[:last + 1])
