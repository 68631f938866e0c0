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
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Optional

from sqsd_fast.choices import METRICS, check_choice, check_positive_int
from sqsd_fast.data.tokenize import count_response_tokens
from sqsd_fast.options import OptionError, RunOptions, option, required_option

METHODS = ("length", "random", "self-inf", "self-inf-n", "gradmatch")
GRADIENT_METHODS = ("self-inf", "self-inf-n", "gradmatch")
GRADMATCH_RESPONSE_TOKENS = 10   # He et al. 2024
BASELINE_COLUMNS = {"index": "int", "score": "float", "rank": "int", "n_tokens": "int",
                    "n_response_tokens": "int", "status": "str"}


def _seed(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


@dataclass(kw_only=True)
class _BaselineInputs:
    model: str = required_option("base model (directory, hub id or .gguf file); its tokenizer "
                                 "tokenizes --data", "DIR")
    method: str = field(metadata={"help": "length | random | self-inf | self-inf-n | gradmatch",
                                  "choices": METHODS})
    state: Optional[str] = option(None, "LoRA adapter directory the gradients are taken at "
                                  "(self-inf, self-inf-n, gradmatch)", "DIR")
    harmful_anchors: Optional[str] = option(None, "gradmatch: data file of harmful anchor "
                                            "samples", "FILE")
    safe_anchors: Optional[str] = option(None, "gradmatch: data file of safe anchor samples, "
                                         "whose similarity is subtracted", "FILE")
    response_tokens: Optional[int] = option(None, "gradmatch: the loss of every sample and "
                                            "anchor covers its first N response tokens "
                                            f"(default {GRADMATCH_RESPONSE_TOKENS})", "N")
    seed: int = option(0, "random: seed of the uniform scores", "N")


@dataclass(kw_only=True)
class BaselineOptions(RunOptions, _BaselineInputs):
    """``sqsd-fast baseline``: one baseline score per sample (see the module docstring)."""

    COMMAND: ClassVar[str] = "baseline"
    HELP: ClassVar[str] = "score every sample with a baseline: length, random, self-inf, self-inf-n, gradmatch"
    DESCRIPTION: ClassVar[str] = (
        "Score every sample of --data with a baseline of the SQSD paper, our versions in the "
        "LoRA-parameter space at --state: length (response tokens), random (uniform, --seed), "
        "self-inf (squared norm of the LoRA gradient), self-inf-n (log(self-inf + 1) + "
        "log(response tokens + 1)), gradmatch (cosine to the mean normalized gradient of "
        "--harmful-anchors, minus that of --safe-anchors). Output rows, in input order: index, "
        "score, rank (1 = highest), n_tokens, n_response_tokens, status.")
    EPILOG: ClassVar[str] = (
        "Example:\n  sqsd-fast baseline --method gradmatch --model BASE --state lora_initial "
        "\\\n      --harmful-anchors harmful.jsonl --safe-anchors safe.jsonl --data train.jsonl "
        "--out gradmatch.jsonl")
    metric: str = option("cosine", "gradmatch only: cosine (He et al.), dot = <g, m> or projection "
                         "= <g, m>/||m||, with m the anchors' mean normalized gradient",
                         choices=METRICS)

    ADAPTER_FIELDS: ClassVar[tuple] = ("state",)
    PATH_FIELDS: ClassVar[tuple] = ("model", "tokenizer", "harmful_anchors", "safe_anchors")
    SCORE_COLUMN: ClassVar[str] = "score"
    COLUMNS: ClassVar[dict] = BASELINE_COLUMNS
    CHECKS: ClassVar[dict] = {
        "method": lambda n, v: check_choice(n, v, METHODS),
        "response_tokens": lambda n, v: check_positive_int(n, v, optional=True),
        "seed": _seed,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        method, gradient = self.method, self.method in GRADIENT_METHODS
        # Each message starts with the field name: the CLI turns it into the option.
        if gradient and self.state is None:
            raise OptionError("state", f"state: --method {method} needs it (the LoRA adapter "
                                       "the gradients are taken at)")
        if not gradient and self.state is not None:
            raise OptionError("state", f"state: --method {method} takes no gradient; leave it out")
        if method == "gradmatch" and self.harmful_anchors is None:
            raise OptionError("harmful_anchors", "harmful_anchors: --method gradmatch needs a data "
                                                 "file of harmful anchor samples")
        for name in ("harmful_anchors", "safe_anchors", "response_tokens"):
            if method != "gradmatch" and getattr(self, name) is not None:
                raise OptionError(name, f"{name}: only --method gradmatch uses it")
        if method != "gradmatch" and self.metric != "cosine":
            raise OptionError("metric", "metric: only --method gradmatch uses it")

    def load_scorer(self) -> "BaselineScorer":
        """The scorer of this run (model, state and anchors loaded only where the method
        needs them): what a ``load_scorer`` hook in ``sqsd_fast.pipeline`` would call."""
        from sqsd_fast.influence.baseline_loading import load_baseline_scorer
        return load_baseline_scorer(self)

    @property
    def loss_response_tokens(self) -> int | None:
        """How many response tokens each loss covers (None: all)."""
        if self.method != "gradmatch":
            return None
        return self.response_tokens or GRADMATCH_RESPONSE_TOKENS


class BaselineScorer:
    """Rows of one baseline, batch by batch, for the resumable run.

    ``stats``: a :class:`GradientStats` at the state (gradient methods); ``queries``: the
    gradmatch anchors' mean normalized gradients (harmful first, then safe if any).
    """

    def __init__(self, options: BaselineOptions, stats=None, queries=None):
        self.options, self.stats, self.queries = options, stats, queries

    def iter_rows(self, samples, *, batch_size: int = 8, max_tokens: int | None = None,
                  skip_indices=frozenset(), progress: bool = False) -> Iterator[list[dict]]:
        """One list of rows per batch: index, score, n_tokens, n_response_tokens, status."""
        method = self.options.method
        if method not in GRADIENT_METHODS:
            todo = [s for s in samples if s.index not in skip_indices]
            for start in range(0, len(todo), batch_size):
                yield [self._row(s, self._plain_score(s), "ok") for s in todo[start:start + batch_size]]
            return
        results = self.stats.iter_compute(
            samples, queries=self.queries, batch_size=batch_size, max_tokens=max_tokens,
            skip_indices=skip_indices,
            progress=progress, response_tokens=self.options.loss_response_tokens)
        by_index = {s.index: s for s in samples}
        for result in results:
            values = self._gradient_scores(result)
            yield [self._row(by_index[i], v, st) for i, v, st in zip(result.indices, values, result.status)]

    def iter_project(self, samples, *, batch_size: int = 8, max_tokens: int | None = None,
                     skip_indices=frozenset(), progress: bool = True, **_unused) -> Iterator[list[dict]]:
        """:meth:`iter_rows` under the name the pipeline calls (``pipeline._iterate``)."""
        return self.iter_rows(samples, batch_size=batch_size, max_tokens=max_tokens,
                              skip_indices=skip_indices, progress=progress)

    def _plain_score(self, sample) -> float:
        if self.options.method == "length":
            return float(count_response_tokens(sample.labels))
        import numpy as np
        return float(np.random.default_rng([self.options.seed, int(sample.index)]).random())

    def _gradient_scores(self, result) -> list[float]:
        method, metric = self.options.method, self.options.metric
        if method == "self-inf":
            return result.grad_sqnorm.tolist()
        if method == "self-inf-n":
            n_resp = [float(n) for n in result.n_response_tokens]
            return [math.log(g + 1.0) + math.log(n + 1.0) for g, n in zip(result.grad_sqnorm.tolist(), n_resp)]
        if metric == "cosine":
            sim = result.query_cosine
        else:
            sim = result.masked(result.query_dot)
            if metric == "projection":
                sim = sim / result.query_sqnorm.sqrt().unsqueeze(0)
        score = sim[:, 0] - (sim[:, 1] if sim.shape[1] > 1 else 0.0)
        return score.tolist()

    @staticmethod
    def _row(sample, value: float, status: str) -> dict:
        n_resp = count_response_tokens(sample.labels)
        if n_resp == 0:
            status = "no_response_tokens"
        ok = status == "ok" and value is not None and math.isfinite(value)
        return {"index": sample.index, "score": float(value) if ok else None, "n_tokens": len(sample.input_ids),
                "n_response_tokens": n_resp, "status": status}


def run_baseline(options: BaselineOptions | None = None, /, **kwargs):
    """The resumable run of a baseline: ``data`` scored to ``out`` (see :class:`BaselineOptions`);
    returns the pipeline's ``RunResult``. Same checks, sidecars, lock and run record as
    ``score_file``."""
    from sqsd_fast import pipeline
    return pipeline.run(options if options is not None else BaselineOptions(**kwargs))
