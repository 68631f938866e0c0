"""Query gradients and directions in factored form: what per-sample gradients are compared with.

Two different objects, on purpose:

- a **query gradient** lives in LoRA-parameter space: per module the gradients of a loss
  with respect to lora_A and lora_B, ``(G_A, G_B)``; its inner product with a sample's
  gradient is ``sum_m <G_A, Q_A> + <G_B, Q_B>`` (TracIn, LESS, gradient matching);
- a **direction** lives in weight space: per module a low-rank matrix ``D = B_d A_d`` (a
  LoRA adapter, alpha/r dropped, as SQSD's directions, docs/METHOD.md §1), compared with
  the sample's induced update ``dW = -(G_B A + B G_A)`` through ``V_A``, ``V_B`` (§3).

The mean induced update of an anchor set is itself a direction of rank 2r:
``-(G_B A + B G_A) = [-G_B, -B] [A; G_A]`` (G averaged over the anchors), so SQSD can run
with anchor samples instead of a trained direction adapter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from sqsd_fast.models.adapters import LoraFactors, check_direction_matches_state


@dataclass
class QueryGradients:
    """K query gradients at one state: ``modules[name] = (G_A (K, r, d_in), G_B (K, d_out, r))``,
    float64, LoRA-parameter gradients (not induced updates); ``labels`` name the K queries."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    labels: list[str] = field(default_factory=list)

    @property
    def k(self) -> int:
        return len(self.labels)

    def sqnorm(self) -> torch.Tensor:
        """(K,) ``sum_m ||G_A||^2 + ||G_B||^2``: each query's squared norm in the global space."""
        total = torch.zeros(self.k, dtype=torch.float64)
        for G_A, G_B in self.modules.values():
            total += (G_A.square().sum((1, 2)) + G_B.square().sum((1, 2))).cpu()
        return total

    @classmethod
    def from_factors(cls, factors: Mapping[str, Sequence[torch.Tensor]], label: str = "query") -> "QueryGradients":
        """One query (or K, with 3-D tensors) from ``{module: (G_A, G_B)}``, G_A (r, d_in) and
        G_B (d_out, r): e.g. the .grad of lora_A / lora_B of a model you trained."""
        modules, k = {}, None
        for name, pair in factors.items():
            if isinstance(pair, LoraFactors):
                pair = (pair.A, pair.B)
            if len(pair) != 2:
                raise ValueError(f"query {label}: module {name} must map to a pair (G_A, G_B)")
            G_A, G_B = (torch.as_tensor(t).detach().double() for t in pair)
            G_A, G_B = (t.unsqueeze(0) if t.dim() == 2 else t for t in (G_A, G_B))
            if G_A.dim() != 3 or G_B.dim() != 3 or G_A.shape[0] != G_B.shape[0] or G_A.shape[1] != G_B.shape[2]:
                raise ValueError(f"query {label}: module {name} has G_A {tuple(G_A.shape)} and G_B {tuple(G_B.shape)}; "
                                 "expected (r, d_in) and (d_out, r), or (K, r, d_in) and (K, d_out, r)")
            if k is not None and G_A.shape[0] != k:
                raise ValueError(f"query {label}: module {name} holds {G_A.shape[0]} queries, others {k}")
            k = G_A.shape[0]
            modules[name] = (G_A, G_B)
        if not modules:
            raise ValueError(f"query {label} holds no module")
        return cls(modules, [label] if k == 1 else [f"{label}[{i}]" for i in range(k)])

    @classmethod
    def stack(cls, queries: Sequence["QueryGradients"]) -> "QueryGradients":
        """The K queries of several ``QueryGradients`` side by side (one pass scores them all)."""
        queries = list(queries)
        if not queries:
            raise ValueError("no query given")
        names = list(queries[0].modules)
        for q in queries[1:]:
            if set(q.modules) != set(names):
                raise ValueError(f"queries {queries[0].labels[0]} and {q.labels[0]} cover different LoRA modules")
        return cls({n: (torch.cat([q.modules[n][0].to(queries[0].modules[n][0].device) for q in queries]),
                        torch.cat([q.modules[n][1].to(queries[0].modules[n][1].device) for q in queries]))
                    for n in names},
                   [label for q in queries for label in q.labels])

    def check_against(self, shapes: Mapping[str, tuple[int, int, int]], state: str) -> None:
        """The queries must cover exactly the state's modules, with its shapes."""
        check_direction_matches_state(self.modules, shapes, direction_name=f"query {self.labels[0]}",
                                      state_name=state)
        for name, (r, d_in, d_out) in shapes.items():
            G_A, G_B = self.modules[name]
            if tuple(G_A.shape[1:]) != (r, d_in) or tuple(G_B.shape[1:]) != (d_out, r):
                raise ValueError(f"query {self.labels[0]}: module {name} has G_A {tuple(G_A.shape[1:])} and G_B "
                                 f"{tuple(G_B.shape[1:])}, but state {state} has A {r} x {d_in} and B {d_out} x {r}")


def mean_update_direction(A: torch.Tensor, B: torch.Tensor, G_A: torch.Tensor, G_B: torch.Tensor) -> LoraFactors:
    """``D = -(G_B A + B G_A)`` as rank-2r factors ``B_d = [-G_B, -B]``, ``A_d = [A; G_A]``."""
    A, B = A.double(), B.double()
    return LoraFactors(A=torch.cat([A, G_A.double()], dim=0), B=torch.cat([-G_B.double(), -B], dim=1))
