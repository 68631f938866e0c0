"""What the resumable run (``sqsd_fast.app.pipeline.run``) needs of a scorer: the RunScorer protocol.

Every command that writes one row per sample (score, project, baseline) hands the pipeline
a ``RunScorer``; the pipeline does the rest (checks, sidecars, resume, ranks, output) the
same way for all. :class:`SQSDRun` puts an ``SQSDScorer`` (or anything with its
``iter_score`` / ``iter_project`` signatures) behind the protocol for ``score`` and
``project``; ``sqsd_fast.influence.baselines.BaselineScorer`` implements it directly.
"""
from __future__ import annotations

from typing import Any, Iterator, Protocol, runtime_checkable

from sqsd_fast.options import ProjectOptions, RunOptions, ScoreOptions


@runtime_checkable
class RunScorer(Protocol):
    """A scorer the pipeline can run.

    ``columns``: the output table ({column: "int" | "float" | "str"}, in order; the rows
    yielded carry these keys, ``rank`` excepted: the pipeline adds it); ``score_column``:
    the column ranks are taken on; ``model``: the model the scorer runs (its device and
    size set the default token budget), or None when it runs none.
    """

    columns: dict[str, str]
    score_column: str

    @property
    def model(self) -> Any: ...

    def iter_rows(self, samples, *, batch_size: int, max_tokens: int | None, skip_indices: frozenset,
                  progress: bool) -> Iterator[list[dict]]:
        """One list of rows per batch for the samples not in ``skip_indices``."""
        ...


class SQSDRun:
    """``score`` (:meth:`SQSDScorer.iter_score`) or ``project`` (:meth:`SQSDScorer.iter_project`
    of the danger pair) as a :class:`RunScorer`, with the run's ``--metric``."""

    def __init__(self, scorer, options: RunOptions):
        if not isinstance(options, (ScoreOptions, ProjectOptions)):
            raise TypeError(f"SQSDRun runs score or project, not {type(options).__name__}")
        self.scorer, self.options = scorer, options
        self.columns = options.columns()
        self.score_column = options.SCORE_COLUMN

    @property
    def model(self):
        return self.scorer.model

    def iter_rows(self, samples, *, batch_size, max_tokens, skip_indices, progress):
        common = dict(metric=self.options.metric, batch_size=batch_size, max_tokens=max_tokens,
                      skip_indices=skip_indices, progress=progress)
        if isinstance(self.options, ScoreOptions):
            return self.scorer.iter_score(samples, **common)
        return self.scorer.iter_project(samples, state="danger_state", direction="danger", **common)
