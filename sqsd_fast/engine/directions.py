"""Directions from what users have, for every face: one map ``{module: LoraFactors}``.

A direction is a low-rank matrix per LoRA module, ``D_m = B_d A_d`` (a LoRA adapter with its
alpha/r dropped, docs/METHOD.md §1). SQSD's danger and safety directions, the influence
API's direction scores and the drift monitor all resolve theirs here, so an adapter
directory, an adapter already on the model and factors in memory are accepted alike.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch

from sqsd_fast.models.adapters import (LoraFactors, check_direction_is_usable, check_direction_matches_state,
                                       load_direction)


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
