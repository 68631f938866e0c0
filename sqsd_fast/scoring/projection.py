"""SQSD's face on the engine: projections of each sample's induced update onto directions.

One forward + one backward per batch (``sqsd_fast.engine.runner``: the loss is the sum over
samples of each sample's mean response-token cross-entropy, so each sample gets exactly its
batch-1 gradient, docs/METHOD.md §1); the :class:`~sqsd_fast.engine.reducers.UpdateProjection`
reducer turns each module's x, h, u, e into per-sample inner products with precomputed
rank-r directions inside the backward pass. No dense d_out x d_in matrix is formed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from sqsd_fast.choices import METRICS, check_choice
from sqsd_fast.engine.modules import LoraModule, lora_modules
from sqsd_fast.engine.reducers import UpdateProjection, projection_reducer
from sqsd_fast.engine.runner import BatchRunner
from sqsd_fast.engine.status import ZERO_UPDATE, batch_statuses, safe_ratio
from sqsd_fast.models.adapters import LoraFactors, check_direction_matches_state


@dataclass
class BatchProjection:
    """Per-sample, per-module statistics of one batch at one (state, direction) pair.

    ``dot`` (B, M) = <dW_m, D_m>, ``update_sqnorm`` (B, M) = ||dW_m||^2 and
    ``direction_sqnorm`` (M,) = ||D_m||^2, all float64 on the CPU; ``status`` per sample,
    one of ``sqsd_fast.engine.status.STATUSES``. Rows follow ``indices`` (the samples' input positions).
    """

    indices: list[int]
    module_names: list[str]
    dot: torch.Tensor
    update_sqnorm: torch.Tensor
    direction_sqnorm: torch.Tensor
    status: list[str] = field(default_factory=list)

    def per_module(self, metric: str = "cosine") -> torch.Tensor:
        """(B, M) per-module ``cosine`` | ``dot`` | ``projection`` (= dot / ||D_m||).

        A module whose update or direction is exactly zero contributes 0 to cosine and
        projection (as a cosine with an epsilon would), not NaN.
        """
        check_choice("metric", metric, METRICS)
        if metric == "dot":
            return self.dot.clone()
        dir_norm = self.direction_sqnorm.sqrt().unsqueeze(0)
        if metric == "projection":
            denom = dir_norm.expand_as(self.dot)
        else:  # cosine
            denom = self.update_sqnorm.sqrt() * dir_norm
        return safe_ratio(self.dot, denom)

    def total(self, metric: str = "cosine") -> torch.Tensor:
        """(B,) sum over modules (docs/METHOD.md §1: P = sum_m cos); NaN where status is not "ok"."""
        values = self.per_module(metric).sum(dim=1)
        ok = torch.tensor([s == "ok" for s in self.status], dtype=torch.bool)
        return torch.where(ok, values, torch.full_like(values, math.nan))


class ProjectionEngine:
    """Scores batches on one ``PeftModel`` that holds the state adapters.

    Args:
        peft_model: the model; its states are adapters on it, borrowed per pass by the
            batch runner (``sqsd_fast.engine.runner``) and given back unchanged.
        directions: ``{direction name: {module name: LoraFactors}}`` (``models/adapters.py``).
        pad_token_id: padding id for collation (any id works: padding is masked and dropped).
        backend: kernel backend for :func:`sqsd_fast.lora_update_stats` ("auto" picks the
            fastest available for the model's device).
        scalings: ``{adapter name: LoRA scaling}`` used while that adapter is scored.
        labels: ``{state or direction name: what the user called it}`` (e.g. the option and
            path), used in error messages.
    """

    def __init__(self, peft_model, directions: dict[str, dict[str, LoraFactors]], *, pad_token_id: int = 0,
                 backend: str = "auto", scalings: dict[str, float] | None = None,
                 labels: dict[str, str] | None = None):
        self.runner = BatchRunner(peft_model, pad_token_id=pad_token_id, scalings=scalings, backend=backend)
        self.model = peft_model
        self.labels = dict(labels or {})
        self.directions = dict(directions)
        self.device = self.runner.device
        self.backend = self.runner.backend
        self._prepared: dict[tuple[str, tuple[str, ...]], tuple[list[LoraModule], UpdateProjection, torch.Tensor]] = {}

    def clear_cache(self) -> None:
        """Forget the precomputed V_A, V_B (call after changing an adapter's weights)."""
        self._prepared.clear()

    def prepare(self, state: str, directions: str | tuple[str, ...]
                ) -> tuple[list[LoraModule], UpdateProjection, torch.Tensor]:
        """Checks each (state, direction) pair once and precomputes V_A, V_B (K stacked
        directions per module, in the reducer) and ||D_m||^2, (M, K) float64."""
        directions = (directions,) if isinstance(directions, str) else tuple(directions)
        key = (state, directions)
        if key not in self._prepared:
            for direction in directions:
                if direction not in self.directions:
                    raise ValueError(f"unknown direction {direction!r}; loaded: "
                                     f"{', '.join(self.directions) or 'none'}")
            modules = lora_modules(self.model, state)
            for direction in directions:
                check_direction_matches_state(
                    self.directions[direction], [m.name for m in modules],
                    direction_name=self.labels.get(direction, repr(direction)),
                    state_name=self.labels.get(state, repr(state)))
            reducer, sqnorms = projection_reducer(modules, [self.directions[d] for d in directions],
                                                  self.backend)
            self._prepared[key] = (modules, reducer, sqnorms)
        return self._prepared[key]

    def project_batch(self, batch, state: str, direction: str) -> BatchProjection:
        """Projections of every sample's induced update at ``state`` onto ``direction``.

        ``batch``: TokenizedSample-like objects (``index``, ``input_ids``, ``labels``).
        Samples without a response token after the causal shift are left out of the
        forward pass and get status "no_response_tokens".
        """
        return self.project_batch_many(batch, state, (direction,))[direction]

    def project_batch_many(self, batch, state: str, directions: tuple[str, ...]
                           ) -> dict[str, BatchProjection]:
        """:meth:`project_batch` for several directions at one state, in ONE forward and
        backward: the kernel contracts each sample's factor gradients with all K
        directions at once (docs/METHOD.md §3). ``{direction: BatchProjection}``."""
        directions = tuple(directions)
        modules, reducer, dir_sqnorm = self.prepare(state, directions)
        out = self.runner.run(batch, state, modules, reducer)
        n, m, k = len(batch), len(modules), len(directions)
        dot = out.values.get("dot", torch.zeros((n, m, k), dtype=torch.float64))
        upd = out.values.get("update_sq", torch.zeros((n, m), dtype=torch.float64))
        status = batch_statuses(out, [dot, upd], zero=ZERO_UPDATE, zero_when=upd)
        indices = [s.index for s in batch]
        names = [module.name for module in modules]
        return {d: BatchProjection(indices=indices, module_names=names, dot=dot[:, :, i].clone(),
                                   update_sqnorm=upd.clone(), direction_sqnorm=dir_sqnorm[:, i].clone(),
                                   status=list(status))
                for i, d in enumerate(directions)}
