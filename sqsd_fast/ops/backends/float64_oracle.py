"""The reference as a backend: the float64 oracle, returning float32 like every backend."""

from __future__ import annotations

import torch

from sqsd_fast.ops.reference import factor_grad_stats_reference


def is_available(device: torch.device) -> bool:
    return True


def unavailable_reason(device: torch.device) -> str:
    return ""


def factor_grad_stats(
    a: torch.Tensor, b: torch.Tensor, cu_seqlens: torch.Tensor, dirs: torch.Tensor | None, gram: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Backend entry (docs/CONTRACTS.md): proj (S, K) float32 and the gram statistic or None."""
    proj, stat = factor_grad_stats_reference(a, b, cu_seqlens, dirs, gram)
    return proj.float(), None if stat is None else stat.float()
