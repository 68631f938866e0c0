"""Training data for ``train-adapter``: read and tokenized exactly as for scoring.

The same readers (``sqsd_fast.data.records``) and the same tokenization
(``sqsd_fast.data.tokenize``, docs/METHOD.md §2: labels -100 on the prompt, so the loss is
on response tokens only) as ``sqsd-fast score``: an adapter trained here sees the tokens
the scores are later computed on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from sqsd_fast.data.batching import collate
from sqsd_fast.data.records import load_raw, normalize_rows
from sqsd_fast.data.tokenize import TokenizedSample, count_truncated, load_tokenizer, tokenize_records
from sqsd_fast.training.weights import read_weights


@dataclass
class TrainData:
    samples: list[TokenizedSample]   # the samples trained on, input order
    n_records: int                   # records read (after --limit)
    n_skipped: int                   # samples without a response token, left out
    n_truncated: int                 # samples cut to max_length
    tokenizer: Any
    raw: Any                         # sqsd_fast.data.RawData
    weights: dict[int, float] | None = None   # record index -> loss weight (--weight-column)


def read_train_records(options):
    """(raw data, normalized records) of ``options.data``: a bad or empty file, or a bad
    --weight-column, fails here, before the model (maybe a GGUF conversion) is touched."""
    raw = load_raw(options.data, split=options.data_split)
    rows = raw.rows if options.limit is None else raw.rows[:options.limit]
    records = normalize_rows(rows, options.field_names(), raw.name)
    if options.weight_column is not None:
        read_weights(rows, options.weight_column, f"--weight-column {options.weight_column} of --data {raw.name}")
    return raw, records


def prepare_train_data(options, raw, records, model_source: str) -> TrainData:
    """Tokenize the records as scoring does; refuse data with nothing to learn."""
    tokenizer = load_tokenizer(options.tokenizer or model_source, option="--tokenizer")
    samples = tokenize_records(records, tokenizer, max_length=options.max_length)
    # A sample without a response token has no loss term: a batch of only such samples
    # would divide by zero tokens, so they are left out (scoring marks them the same way).
    kept = [s for s in samples if s.n_response_tokens > 0]
    if not kept:
        raise ValueError(f"{raw.name}: none of the {len(samples)} samples has a response "
                         f"token left after truncation to --max-length {options.max_length}; "
                         f"raise --max-length or check the response field "
                         f"(--response-field)")
    weights = None
    if options.weight_column is not None:
        rows = raw.rows if options.limit is None else raw.rows[:options.limit]
        weights = dict(enumerate(read_weights(rows, options.weight_column, raw.name)))
    return TrainData(kept, len(samples), len(samples) - len(kept), count_truncated(samples),
                     tokenizer, raw, weights)


@dataclass
class ResponseOnlyCollator:
    """Trainer data collator: right-padded batches by the scoring engine's ``collate``."""

    pad_token_id: int

    def __call__(self, features: Sequence[TokenizedSample]) -> dict:
        return collate(features, self.pad_token_id)
