"""The paper's baselines as a library: ``sqsd-fast baseline --method METHOD``.

Our versions of those methods, computed in the LoRA-parameter space at ``--state`` (the
gradient of the LoRA factors A, B of every module), not in the full parameter space the
original papers use:

- ``length``: the number of response tokens (loss positions after the causal shift).
- ``random``: uniform in [0, 1), from ``--seed`` and the sample's index (so a resumed run
  or another batch size gives the same numbers).
- ``self-inf``: TracIn self-influence, ``||g(z)||^2 = sum_m ||G_A||^2 + ||G_B||^2``, with
  the loss of scoring (mean cross-entropy over the response tokens, docs/METHOD.md §1).
- ``self-inf-n``: ``log(self_inf + 1) + log(n_response_tokens + 1)`` (Guan et al. 2025,
  "Benign Samples Matter!", as re-implemented publicly; their official code ships only the
  un-normalized Self-Inf score).
- ``gradmatch``: He et al. 2024 ("What is in Your Safe Data?"), gradient matching:
  ``cos(g(z), mean_a ĝ(a))`` over ``--harmful-anchors``, minus the same over
  ``--safe-anchors`` when given, where ĝ is the L2-normalized gradient (in the global LoRA
  space). Every loss (samples and anchors) covers the first ``--response-tokens`` response
  tokens only (default 10, their choice). ``--metric dot`` / ``projection`` replace the
  cosine by ``<g, m>`` / ``<g, m>/||m||``.

Rows: ``index, score, rank, n_tokens, n_response_tokens, status``; higher score = ranked
first. Samples without a response token get no score (status ``no_response_tokens``), for
every method, so that all rankings cover the same samples.

The options are ``sqsd_fast.options.BaselineOptions`` (beside every other command's); the
resumable run is ``sqsd_fast.app.pipeline.baseline_file``, which loads the scorer here
(:func:`load_baseline_scorer`) and runs it as any ``RunScorer``.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from sqsd_fast.data.records import read_records
from sqsd_fast.data.tokenize import count_response_tokens, load_tokenizer, tokenize_records
from sqsd_fast.engine.status import NO_RESPONSE_TOKENS, OK
from sqsd_fast.influence.stats import GradientStats
from sqsd_fast.models import resolve_model
from sqsd_fast.models.quiet import quiet_libraries
from sqsd_fast.options import BaselineOptions


class BaselineScorer:
    """Rows of one baseline, batch by batch, for the resumable run (it is a
    ``sqsd_fast.app.run_protocol.RunScorer``; build it with :func:`load_baseline_scorer`).

    ``stats``: a :class:`GradientStats` at the state (gradient methods); ``queries``: the
    gradmatch anchors' mean normalized gradients (harmful first, then safe if any).
    """

    def __init__(self, options: BaselineOptions, stats=None, queries=None):
        self.options, self.stats, self.queries = options, stats, queries
        self.columns = options.columns()
        self.score_column = options.SCORE_COLUMN

    @property
    def model(self):
        """The model the gradients run on (None for length and random: no model)."""
        return None if self.stats is None else self.stats.model

    def use_checkpointing(self, enabled: bool = True) -> "BaselineScorer":
        if self.stats is not None:
            self.stats.use_checkpointing(enabled)
        return self

    def iter_rows(self, samples, *, batch_size: int = 8, max_tokens: int | None = None,
                  skip_indices=frozenset(), progress: bool = False) -> Iterator[list[dict]]:
        """One list of rows per batch: index, score, n_tokens, n_response_tokens, status."""
        method = check_method(self.options.method)
        if method in PLAIN_SCORES:
            todo = [s for s in samples if s.index not in skip_indices]
            for start in range(0, len(todo), batch_size):
                yield [self._row(s, self._plain_score(s), OK) for s in todo[start:start + batch_size]]
            return
        results = self.stats.iter_compute(
            samples, queries=self.queries, batch_size=batch_size, max_tokens=max_tokens,
            skip_indices=skip_indices,
            progress=progress, response_tokens=self.options.loss_response_tokens)
        by_index = {s.index: s for s in samples}
        for result in results:
            values = self._gradient_scores(result)
            yield [self._row(by_index[i], v, st) for i, v, st in zip(result.indices, values, result.status)]

    def _plain_score(self, sample) -> float:
        return PLAIN_SCORES[self.options.method](sample, self.options)

    def _gradient_scores(self, result) -> list[float]:
        return GRADIENT_SCORES[self.options.method](result, self.options)

    @staticmethod
    def _row(sample, value: float, status: str) -> dict:
        n_resp = count_response_tokens(sample.labels)
        if n_resp == 0:
            status = NO_RESPONSE_TOKENS
        ok = status == OK and value is not None and math.isfinite(value)
        return {"index": sample.index, "score": float(value) if ok else None, "n_tokens": len(sample.input_ids),
                "n_response_tokens": n_resp, "status": status}


# ----------------------------------------------------------------------- the methods
# One entry per method, the one place its score is defined: a plain method scores a sample
# from its tokens alone, a gradient method a batch's GradientResult. The names are
# options.METHODS (the CLI's choices); the test suite checks the two agree.


def _length(sample, options) -> float:
    return float(count_response_tokens(sample.labels))


def _random(sample, options) -> float:
    return float(np.random.default_rng([options.seed, int(sample.index)]).random())


def _self_inf(result, options) -> list[float]:
    return result.grad_sqnorm.tolist()


def _self_inf_n(result, options) -> list[float]:
    n_resp = [float(n) for n in result.n_response_tokens]
    return [math.log(g + 1.0) + math.log(n + 1.0) for g, n in zip(result.grad_sqnorm.tolist(), n_resp)]


def _gradmatch(result, options) -> list[float]:
    if options.metric == "cosine":
        sim = result.query_cosine
    else:
        sim = result.masked(result.query_dot)
        if options.metric == "projection":
            sim = sim / result.query_sqnorm.sqrt().unsqueeze(0)
    score = sim[:, 0] - (sim[:, 1] if sim.shape[1] > 1 else 0.0)
    return score.tolist()


PLAIN_SCORES = {"length": _length, "random": _random}
GRADIENT_SCORES = {"self-inf": _self_inf, "self-inf-n": _self_inf_n, "gradmatch": _gradmatch}


def check_method(method: str) -> str:
    """``method`` if a baseline of that name exists; else a ValueError listing them."""
    if method not in PLAIN_SCORES and method not in GRADIENT_SCORES:
        raise ValueError(f"unknown baseline method {method!r}; known: "
                         f"{', '.join([*PLAIN_SCORES, *GRADIENT_SCORES])}")
    return method


def load_baseline_scorer(options: BaselineOptions, tokenizer=None) -> BaselineScorer:
    """The model, the state and the anchors' gradients, only for the gradient methods.
    ``tokenizer``: the run's (default: loaded from --tokenizer or --model, as ``prepare``)."""
    if check_method(options.method) in PLAIN_SCORES:
        return BaselineScorer(options)

    if tokenizer is None:
        tokenizer = load_tokenizer(options.tokenizer or resolve_model(options.model, progress=options.progress),
                                   option="--tokenizer")

    with quiet_libraries():
        stats = GradientStats.from_pretrained(
            options.model, options.state, tokenizer=tokenizer, dtype=options.dtype, device=options.device,
            quantization=options.quantization(), backend=options.backend, batch_size=options.batch_size,
            max_tokens=options.max_tokens, max_length=options.max_length)
    queries = None
    if options.method == "gradmatch":
        queries = []
        for name in ("harmful_anchors", "safe_anchors"):
            path = getattr(options, name)
            if path is None:
                continue
            label = f"--{name.replace('_', '-')} {path}"
            try:
                records = read_records(path, options.field_names())
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from None
            anchors = tokenize_records(records, tokenizer, max_length=options.max_length)
            queries.append(stats.query_gradient(anchors, reduce="mean", normalize=True, label=label,
                                                response_tokens=options.loss_response_tokens))
    return BaselineScorer(options, stats, queries)
