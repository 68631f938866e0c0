"""What the scorer accepts as samples, and the checks that they fit the model.

``SQSDScorer.score`` takes a data file path, normalized ``Record``s, ``TokenizedSample``s
or plain dicts with ``input_ids`` and ``labels``; all become tokenized samples here. Each
sample's ``index`` must be unique (rows are matched back to inputs by it), and every token
id and label must exist in the model's vocabulary and every sample fit its context: a
bad one is named before the first forward pass instead of surfacing as an ``IndexError``
deep inside the embedding.
"""
from __future__ import annotations

import os
from typing import Iterable

from sqsd_fast.data.records import Record, read_records
from sqsd_fast.data.tokenize import DEFAULT_MAX_LENGTH, IGNORE_INDEX, tokenize_records


class DictSample:
    """A TokenizedSample stand-in for dict inputs."""

    __slots__ = ("index", "input_ids", "labels", "n_tokens")

    def __init__(self, index, input_ids, labels):
        self.index, self.input_ids, self.labels = index, list(input_ids), list(labels)
        self.n_tokens = len(self.input_ids)


def as_samples(samples, tokenizer=None, *, max_length: int = DEFAULT_MAX_LENGTH) -> list:
    """Tokenized samples from any accepted input; refuses repeated indices."""

    if isinstance(samples, (str, os.PathLike)):
        samples = read_records(samples)
    samples = list(samples)
    if samples and all(isinstance(s, Record) for s in samples):
        if tokenizer is None:
            raise ValueError("records need a tokenizer: build the scorer from a model directory, or pass "
                             "tokenizer= to from_pretrained")
        samples = tokenize_records(samples, tokenizer, max_length=max_length)
    out = []
    for position, s in enumerate(samples):
        if isinstance(s, dict):
            if "input_ids" not in s or "labels" not in s:
                raise ValueError(f"sample {position}: a dict sample needs input_ids and labels "
                                 "(or pass records / a data file and the scorer tokenizes them)")
            s = DictSample(s.get("index", position), s["input_ids"], s["labels"])
        elif not all(hasattr(s, a) for a in ("index", "input_ids", "labels")):
            raise TypeError(f"sample {position}: expected a TokenizedSample, a Record, a dict with input_ids and "
                            f"labels, or a data file path; got {type(s).__name__}")
        out.append(s)
    _check_unique_indices(out)
    return out


def _check_unique_indices(samples: list) -> None:
    first: dict = {}
    for position, s in enumerate(samples):
        if s.index in first:
            raise ValueError(f"samples at positions {first[s.index]} and {position} have the same index "
                             f"{s.index!r}; rows are matched to samples by index, so give each a unique one "
                             "(e.g. tokenize the concatenated records once)")
        first[s.index] = position


def check_fits_model(samples: Iterable, model) -> None:
    """Every id and label inside the vocabulary, every sample within the context length."""
    vocab = model.get_input_embeddings().num_embeddings
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    for s in samples:
        ids = s.input_ids
        if ids and (max(ids) >= vocab or min(ids) < 0):
            bad = next(t for t in ids if t >= vocab or t < 0)
            raise ValueError(f"record {s.index}: token id {bad} is outside the model's vocabulary (0..{vocab - 1}); "
                             "were these input_ids made with another tokenizer?")
        targets = [t for t in s.labels if t != IGNORE_INDEX]
        if targets and (max(targets) >= vocab or min(targets) < 0):
            bad = next(t for t in targets if t >= vocab or t < 0)
            raise ValueError(f"record {s.index}: label {bad} is outside the model's vocabulary (0..{vocab - 1}) "
                             f"and is not {IGNORE_INDEX} (the ignored label)")
        if context is not None and len(ids) > context:
            raise ValueError(f"record {s.index}: {len(ids)} tokens, longer than the model's context of {context}; "
                             f"use --max-length {context} or less (pre-tokenized records are not truncated)")
