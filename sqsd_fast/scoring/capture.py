"""The SQSD engine's reduction of each LoRA module's x, h, u, e (captured by taps.py).

In u's hook (the moment a module's four activations exist), the batch's real tokens are
packed (padding rows dropped) and reduced with :func:`sqsd_fast.ops.lora_update_stats_projected`
to per-sample inner products with the precomputed directions and squared update norms
(docs/METHOD.md §3). Results stay on the device until the batch ends: no host sync per module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sqsd_fast.ops import lora_update_stats_projected


@dataclass
class ModuleProjection:
    """What scoring needs of one module at one (state, direction) pair, precomputed once."""

    name: str
    layer: nn.Module  # the peft LoRA layer holding the state
    A: torch.Tensor  # (r, d_in), the live weight
    B: torch.Tensor  # (d_out, r)
    V_A: torch.Tensor  # (K, r, d_in) = (B^T B_d) A_d
    V_B: torch.Tensor  # (K, d_out, r) = B_d (A_d A^T)


class ProjectionReducer:
    """``reduce(slot, x, h, u, e)`` for :class:`sqsd_fast.scoring.taps.TapSession`.

    ``rows``: indices of the non-padding positions in the flattened (B*L) batch (None when
    there is no padding); ``cu_seqlens`` (S+1,) int64 on the model's device. After the
    backward, :meth:`results` gives ``dot`` (S, M, K) and ``sqnorm`` (S, M), float32 on
    the device, zeros for modules no gradient reached.
    """

    def __init__(self, specs: list[ModuleProjection], backend: str, rows: torch.Tensor | None,
                 cu_seqlens: torch.Tensor):
        self.specs, self.backend, self.rows, self.cu_seqlens = specs, backend, rows, cu_seqlens
        self.dot: list = [None] * len(specs)
        self.sqnorm: list = [None] * len(specs)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        flat = t.detach().reshape(-1, t.shape[-1])
        return flat if self.rows is None else flat.index_select(0, self.rows)

    def __call__(self, slot: int, x, h, u, e) -> None:
        x, h, u, e = (self.pack(t) for t in (x, h, u, e))
        dtype = x.dtype
        for t in (h, u, e):
            dtype = torch.promote_types(dtype, t.dtype)
        x, h, u, e = (t.to(dtype) for t in (x, h, u, e))
        spec = self.specs[slot]
        self.dot[slot], self.sqnorm[slot] = lora_update_stats_projected(
            x, h, u, e, self.cu_seqlens, spec.A, spec.B, spec.V_A, spec.V_B,
            backend=self.backend, check_inputs=False,
        )

    def results(self, n_samples: int, n_directions: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        zeros_dot = torch.zeros((n_samples, n_directions), dtype=torch.float32, device=device)
        zeros_sq = torch.zeros((n_samples,), dtype=torch.float32, device=device)
        dot = torch.stack([d if d is not None else zeros_dot for d in self.dot], dim=1)
        sqnorm = torch.stack([s if s is not None else zeros_sq for s in self.sqnorm], dim=1)
        return dot, sqnorm
