"""What one pass over samples gives back: per-sample statistics, rows in input order.

Two norms, not to be confused:

- ``grad_sqnorm`` = ``sum_m ||G_A||^2 + ||G_B||^2``: the squared norm of the sample's
  gradient with respect to the LoRA parameters (TracIn self-influence, gradient cosines);
- ``update_sqnorm`` = ``sum_m ||dW_m||^2`` with ``dW_m = -(G_B A + B G_A)``: the squared
  norm of the weight update one SGD step on the sample induces (what SQSD normalizes by).

Rows whose ``status`` is not "ok" hold NaN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from sqsd_fast.engine.status import safe_ratio



@dataclass
class GradientResult:
    """Per-sample statistics at one state; tensors are float64 on the CPU, one row per sample.

    Attributes:
        grad_sqnorm_per_module (S, M): ``||G_A||^2 + ||G_B||^2`` per module.
        update_sqnorm_per_module (S, M): ``||dW_m||^2``.
        query_dot (S, K): ``<g, q_k>`` summed over modules (LoRA-parameter space).
        query_sqnorm (K,): ``||q_k||^2``.
        direction_dot_per_module (S, M, J): ``<dW_m, D_jm>``; direction_sqnorm (M, J) ``||D_jm||^2``.
        sketch (S, D) or None: Kronecker sketches of the LoRA-parameter gradient (sketch.py).
    """

    indices: list
    module_names: list[str]
    status: list[str]
    n_tokens: list[int]
    n_response_tokens: list[int]
    grad_sqnorm_per_module: torch.Tensor
    update_sqnorm_per_module: torch.Tensor
    query_dot: torch.Tensor
    direction_dot_per_module: torch.Tensor
    query_sqnorm: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    direction_sqnorm: torch.Tensor | None = None
    sketch: torch.Tensor | None = None
    query_labels: list[str] = field(default_factory=list)
    direction_labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def ok(self) -> torch.Tensor:
        return torch.tensor([s == "ok" for s in self.status], dtype=torch.bool)

    def masked(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` (S, ...) with NaN on the rows whose status is not "ok"."""
        mask = self.ok.reshape(-1, *([1] * (values.dim() - 1)))
        return torch.where(mask, values, torch.full_like(values, math.nan))

    @property
    def grad_sqnorm(self) -> torch.Tensor:
        """(S,) squared norm of the LoRA-parameter gradient (TracIn self-influence)."""
        return self.masked(self.grad_sqnorm_per_module.sum(1))

    @property
    def update_sqnorm(self) -> torch.Tensor:
        """(S,) squared norm of the induced update, summed over modules."""
        return self.masked(self.update_sqnorm_per_module.sum(1))

    @property
    def query_cosine(self) -> torch.Tensor:
        """(S, K) cosine in the global LoRA-parameter space: ``sum_m <g_m, q_m> / (||g|| ||q||)``."""
        den = (self.grad_sqnorm_per_module.sum(1, keepdim=True) * self.query_sqnorm.unsqueeze(0)).sqrt()
        return self.masked(safe_ratio(self.query_dot, den))

    @property
    def direction_dot(self) -> torch.Tensor:
        """(S, J) ``sum_m <dW_m, D_m>``."""
        return self.masked(self.direction_dot_per_module.sum(1))

    @property
    def direction_cosine(self) -> torch.Tensor:
        """(S, J) SQSD's projection ``P = sum_m cos(dW_m, D_m)`` (docs/METHOD.md §1)."""
        den = (self.update_sqnorm_per_module.unsqueeze(2) * self.direction_sqnorm.unsqueeze(0)).sqrt()
        return self.masked(safe_ratio(self.direction_dot_per_module, den).sum(1))

    @property
    def direction_global_cosine(self) -> torch.Tensor:
        """(S, J) one cosine over all modules: ``sum_m <dW_m, D_m> / (||dW|| ||D||)``."""
        den = (self.update_sqnorm_per_module.sum(1, keepdim=True) * self.direction_sqnorm.sum(0).unsqueeze(0)).sqrt()
        return self.masked(safe_ratio(self.direction_dot_per_module.sum(1), den))

    def rows(self) -> list[dict]:
        """One dict per sample: index, status, token counts, both norms, and per query /
        direction ``query_dot``/``query_cosine`` and ``direction_cosine`` lists."""
        out = []
        cols = {"grad_sqnorm": self.grad_sqnorm, "update_sqnorm": self.update_sqnorm}
        if self.query_dot.shape[1]:
            cols.update(query_dot=self.query_dot, query_cosine=self.query_cosine)
        if self.direction_dot_per_module.shape[2]:
            cols.update(direction_dot=self.direction_dot, direction_cosine=self.direction_cosine)
        for i, index in enumerate(self.indices):
            row = {"index": index, "status": self.status[i], "n_tokens": self.n_tokens[i],
                   "n_response_tokens": self.n_response_tokens[i]}
            for name, values in cols.items():
                v = values[i].tolist()
                row[name] = [None if math.isnan(x) else x for x in v] if isinstance(v, list) else \
                    (None if math.isnan(v) else v)
            out.append(row)
        return out

    @classmethod
    def concat(cls, parts: list["GradientResult"], order: list | None = None) -> "GradientResult":
        """Batches joined into one result; ``order`` (sample indices) sets the row order."""
        if not parts:
            raise ValueError("no batch to join: no sample was given")
        first = parts[0]
        position = list(range(sum(len(p) for p in parts)))
        indices = [i for p in parts for i in p.indices]
        if order is not None:
            where = {index: row for row, index in enumerate(indices)}
            position = [where[index] for index in order if index in where]
        take = torch.tensor(position, dtype=torch.long)
        values = {}
        for f in fields(cls):
            name = f.name
            if name in ("module_names", "query_sqnorm", "direction_sqnorm", "query_labels", "direction_labels"):
                values[name] = getattr(first, name)
            elif isinstance(getattr(first, name), torch.Tensor) or getattr(first, name) is None:
                if getattr(first, name) is None:
                    values[name] = None
                else:
                    values[name] = torch.cat([getattr(p, name) for p in parts])[take]
            else:
                joined = [v for p in parts for v in getattr(p, name)]
                values[name] = [joined[i] for i in position]
        return cls(**values)
