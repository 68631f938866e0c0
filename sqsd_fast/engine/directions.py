"""Directions for every face: resolved from what users have, and prepared for a state.

A direction is a low-rank matrix per LoRA module, ``D_m = B_d A_d`` (a LoRA adapter with its
alpha/r dropped, docs/METHOD.md §1). SQSD's danger and safety directions, the influence
API's direction scores, online scoring and the drift monitor all resolve theirs here
(:func:`resolve_direction`), so an adapter directory, an adapter already on the model and
factors in memory are accepted alike; and every reducer that projects onto directions gets
them from :func:`prepare_directions`, so V_A, V_B and ||D||^2 are computed one way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from sqsd_fast.engine.modules import LoraModule
from sqsd_fast.models.adapters import (LoraFactors, check_direction_is_usable, check_direction_matches_state,
                                       load_direction)
from sqsd_fast.ops import direction_sqnorm, project_directions


def resolve_direction(spec, peft_model, shapes: Mapping[str, tuple[int, int, int]] | None = None, *,
                      where: str, state: str | None = None) -> dict[str, LoraFactors]:
    """A direction from an adapter directory (float32), the name of an adapter on
    ``peft_model`` (float32), or ``{module: LoraFactors or (A_d, B_d)}`` in memory (dtype
    kept), on the model's device. Checked to be usable and, when ``shapes`` ({module: (r,
    d_in, d_out)} of ``state``) is given, to cover the same modules with matching shapes.
    Errors start with ``where`` (how the caller names the direction)."""
    device = next(peft_model.parameters()).device
    if isinstance(spec, (str, os.PathLike)):
        factors = load_direction(spec, peft_model)
    elif isinstance(spec, Mapping):
        factors = {}
        for name, pair in spec.items():
            if not isinstance(pair, LoraFactors):
                if len(pair) != 2:
                    raise ValueError(f"{where}: module {name} must map to LoraFactors or a pair (A, B)")
                pair = LoraFactors(*(torch.as_tensor(t).detach() for t in pair))
            factors[name] = LoraFactors(pair.A.to(device), pair.B.to(device))
    else:
        raise TypeError(f"{where}: expected an adapter directory, an adapter name or a dict "
                        f"{{module: (A, B)}}; got {type(spec).__name__}")
    try:
        check_direction_is_usable(factors)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if shapes is None:
        return factors
    check_direction_matches_state(factors, shapes, direction_name=where.removeprefix("direction "),
                                  state_name=state)
    for name, (r, d_in, d_out) in shapes.items():
        A, B = factors[name].A, factors[name].B
        if A.dim() != 2 or B.dim() != 2 or A.shape[1] != d_in or B.shape[0] != d_out or A.shape[0] != B.shape[1]:
            raise ValueError(f"{where}: module {name} has A {tuple(A.shape)} and B {tuple(B.shape)}; "
                             f"expected (r_d, {d_in}) and ({d_out}, r_d)")
    return factors


@dataclass(frozen=True)
class PreparedDirections:
    """K directions as the factor gradients of one state see them (docs/METHOD.md §3).

    ``V_A[m]`` (K, r, d_in) and ``V_B[m]`` (K, d_out, r), float32 on module m's device, so
    that ``<dW_m, D_mk> = -(<G_A, V_A[m][k]> + <G_B, V_B[m][k]>)``; ``sqnorm`` (M, K) float64
    on the CPU: ``||D_mk||^2``."""

    V_A: list[torch.Tensor]
    V_B: list[torch.Tensor]
    sqnorm: torch.Tensor


def prepare_directions(modules: Sequence[LoraModule], directions: Sequence[Mapping[str, LoraFactors]]
                       ) -> PreparedDirections:
    """``directions`` (K maps ``{module: LoraFactors}``, ranks may differ) at the state whose
    ``modules`` (live factors) are given. V_A and V_B depend on the state's A and B: prepare
    again after the state changes.

    Every direction is taken in float32, as one read from an adapter directory is, whatever
    dtype factors given in memory have; ``||D||^2`` is computed from those float32 factors in
    float64 and kept at float32 precision (``ops.direction_sqnorm``), as SQSD's scores have
    always used it."""
    V_A, V_B, sqnorms = [], [], []
    for module in modules:
        pairs = [(f.A.to(module.A.device, torch.float32).unsqueeze(0),
                  f.B.to(module.A.device, torch.float32).unsqueeze(0))
                 for f in (d[module.name] for d in directions)]
        maps = [project_directions(module.A, module.B, dA, dB) for dA, dB in pairs]
        V_A.append(torch.cat([v for v, _ in maps]))
        V_B.append(torch.cat([v for _, v in maps]))
        sqnorms.append(torch.cat([direction_sqnorm(dA, dB) for dA, dB in pairs]))
    sqnorm = torch.stack(sqnorms).double().cpu() if sqnorms else torch.zeros(0, len(directions), dtype=torch.float64)
    return PreparedDirections(V_A, V_B, sqnorm)
