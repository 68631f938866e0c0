"""The scoring engine: one forward + one backward per batch gives every sample's projections.

A batch's loss is the SUM over samples of each sample's MEAN response-token cross-entropy
(causal shift, -100 labels masked). Samples do not interact inside a batch (attention is
per row; the base weights are frozen), so one backward gives every sample exactly the
gradients it would get alone at batch size 1, as in the authors' algorithm (docs/METHOD.md §1).
The capture hooks (capture.py) reduce them to per-sample, per-module statistics inside the
backward pass; no dense d_out x d_in matrix is formed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from sqsd_fast.ops import direction_sqnorm, project_directions, resolve_backend
from sqsd_fast.choices import METRICS, check_choice
from sqsd_fast.data.tokenize import count_response_tokens
from sqsd_fast.scoring.adapters import LoraFactors, check_direction_matches_state, state_modules
from sqsd_fast.scoring.batch_pass import loss_head, pack_batch, response_loss
from sqsd_fast.scoring.capture import ModuleProjection, ProjectionReducer
from sqsd_fast.scoring.model_state import ModelSettings
from sqsd_fast.scoring.taps import TapSession

STATUSES = ("ok", "no_response_tokens", "zero_update", "non_finite_gradient")


@dataclass
class BatchProjection:
    """Per-sample, per-module statistics of one batch at one (state, direction) pair.

    ``dot`` (B, M) = <dW_m, D_m>, ``update_sqnorm`` (B, M) = ||dW_m||^2 and
    ``direction_sqnorm`` (M,) = ||D_m||^2, all float64 on the CPU; ``status`` per sample,
    one of :data:`STATUSES`. Rows follow ``indices`` (the samples' input positions).
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
        safe = torch.where(denom > 0, denom, torch.ones_like(denom))
        return torch.where(denom > 0, self.dot / safe, torch.zeros_like(self.dot))

    def total(self, metric: str = "cosine") -> torch.Tensor:
        """(B,) sum over modules (docs/METHOD.md §1: P = sum_m cos); NaN where status is not "ok"."""
        values = self.per_module(metric).sum(dim=1)
        ok = torch.tensor([s == "ok" for s in self.status], dtype=torch.bool)
        return torch.where(ok, values, torch.full_like(values, math.nan))


class ProjectionEngine:
    """Scores batches on one ``PeftModel`` that holds the state adapters.

    Args:
        peft_model: the model; its states are adapters on it. For each pass the engine
            activates the state, freezes every parameter (gradients are taken with respect
            to the input embeddings only, the hooks capture the rest), sets eval mode and
            the state's scaling override, and restores the caller's settings afterwards
            (model_state.py).
        directions: ``{direction name: {module name: LoraFactors}}`` (see adapters.py).
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
        self.model = peft_model
        self.settings = ModelSettings(peft_model, scalings)
        self.labels = dict(labels or {})
        self.directions = dict(directions)
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
        self.device = next(peft_model.parameters()).device
        self.backend = resolve_backend(backend, self.device)
        self._prepared: dict[tuple[str, str], tuple[list[ModuleProjection], torch.Tensor]] = {}
        self._loss_head = loss_head(peft_model)

    def clear_cache(self) -> None:
        """Forget the precomputed V_A, V_B (call after changing an adapter's weights)."""
        self._prepared.clear()

    def prepare(self, state: str, directions: str | tuple[str, ...]
                ) -> tuple[list[ModuleProjection], torch.Tensor]:
        """Checks each (state, direction) pair once and precomputes V_A, V_B (K stacked
        directions per module) and ||D_m||^2, (M, K) float64."""
        directions = (directions,) if isinstance(directions, str) else tuple(directions)
        key = (state, directions)
        if key not in self._prepared:
            for direction in directions:
                if direction not in self.directions:
                    raise ValueError(f"unknown direction {direction!r}; loaded: "
                                     f"{', '.join(self.directions) or 'none'}")
            modules = state_modules(self.model, state)
            for direction in directions:
                check_direction_matches_state(
                    self.directions[direction], modules,
                    direction_name=self.labels.get(direction, repr(direction)),
                    state_name=self.labels.get(state, repr(state)))
            specs, sqnorms = [], []
            for name, layer in modules.items():
                A, B = layer.lora_A[state].weight.detach(), layer.lora_B[state].weight.detach()
                # Directions may differ in rank: each is mapped to the state's rank r first,
                # then the K maps are stacked for the kernel.
                pairs = [self.directions[d][name] for d in directions]
                maps = [project_directions(A, B, f.A.unsqueeze(0), f.B.unsqueeze(0)) for f in pairs]
                V_A, V_B = torch.cat([v for v, _ in maps]), torch.cat([v for _, v in maps])
                specs.append(ModuleProjection(name, layer, A, B, V_A, V_B))
                sqnorms.append(torch.cat([direction_sqnorm(f.A.unsqueeze(0), f.B.unsqueeze(0))
                                          for f in pairs]))
            self._prepared[key] = (specs, torch.stack(sqnorms).double().cpu())
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
        specs, dir_sqnorm = self.prepare(state, directions)
        names = [s.name for s in specs]
        n, m, k = len(batch), len(specs), len(directions)
        dot = torch.zeros((n, m, k), dtype=torch.float64)
        upd = torch.zeros((n, m), dtype=torch.float64)
        status = ["ok"] * n
        scored = []
        for row, sample in enumerate(batch):
            if len(sample.labels) != len(sample.input_ids):
                raise ValueError(
                    f"sample {sample.index}: {len(sample.input_ids)} input_ids but {len(sample.labels)} labels"
                )
            if count_response_tokens(sample.labels) == 0:
                status[row] = "no_response_tokens"
            else:
                scored.append(row)
        if scored:
            scored_dot, scored_sqnorm, finite_loss = self._forward_backward(
                [batch[i] for i in scored], state, specs, k)
            rows = torch.tensor(scored, dtype=torch.long)
            dot[rows], upd[rows] = scored_dot, scored_sqnorm
            for j, row in enumerate(scored):
                finite = torch.isfinite(scored_dot[j]).all() and torch.isfinite(scored_sqnorm[j]).all()
                if not finite_loss[j] or not finite:
                    status[row] = "non_finite_gradient"
                elif float(scored_sqnorm[j].sum()) == 0.0:
                    status[row] = "zero_update"
        indices = [s.index for s in batch]
        return {d: BatchProjection(indices=indices, module_names=names, dot=dot[:, :, i].clone(),
                                   update_sqnorm=upd.clone(), direction_sqnorm=dir_sqnorm[:, i].clone(),
                                   status=list(status))
                for i, d in enumerate(directions)}

    def _forward_backward(self, samples, state, specs, n_directions: int):
        """One forward + backward of the samples (all with >= 1 response token) at ``state``.

        Returns dot (S, M, K) and update_sqnorm (S, M) float64 on the CPU, and a
        per-sample finite-loss flag list.
        """
        batch = pack_batch(samples, self.pad_token_id, self.device)
        n = batch.size
        reducer = ProjectionReducer(specs, self.backend, batch.rows, batch.cu_seqlens)
        taps = TapSession([(spec.name, spec.layer) for spec in specs], state, reducer)
        with self.settings.scoring(state), torch.enable_grad(), taps:
            embeds = self.model.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
            per_sample = response_loss(self.model, embeds, batch, self._loss_head)
            torch.autograd.grad(per_sample.sum(), embeds)
        dot, sqnorm = reducer.results(n, n_directions, self.device)
        m = sqnorm.shape[1]
        # The batch's one host sync: everything comes back in one copy.
        packed = torch.cat([dot.reshape(n, m * n_directions), sqnorm,
                            per_sample.detach().float().unsqueeze(1)], dim=1).double().cpu()
        k_end = m * n_directions
        finite = torch.isfinite(packed[:, k_end + m]).tolist()
        return packed[:, :k_end].view(n, m, n_directions), packed[:, k_end:k_end + m], finite
