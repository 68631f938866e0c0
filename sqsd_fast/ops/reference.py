"""Plain-PyTorch float64 reference: the oracle every fast backend is tested against.

It forms the per-sample gradients ``G_s`` densely, which the fast backends must never do;
clarity over speed here.
"""

from __future__ import annotations

import torch


def per_sample_gradients(a: torch.Tensor, b: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``G_s = sum_{t in s} a_t b_t^T`` for every sample, in float64.

    a: (N, p), b: (N, q), cu_seqlens: (S+1,) -> (S, p, q).
    """
    offsets = cu_seqlens.tolist()
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    grads = a64.new_zeros((len(offsets) - 1, a.shape[1], b.shape[1]))
    for s, (start, end) in enumerate(zip(offsets[:-1], offsets[1:])):
        if end > start:
            grads[s] = a64[start:end].T @ b64[start:end]
    return grads


def factor_grad_stats_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    cu_seqlens: torch.Tensor,
    dirs: torch.Tensor | None = None,
    gram: str = "none",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float64 oracle of :func:`sqsd_fast.ops.factor_grad_stats` (docs/METHOD.md §4).

    a: (N, p), b: (N, q), cu_seqlens: (S+1,), dirs: (K, p, q) or None. Returns ``proj``
    (S, K) and the gram statistic ((S, p, p) "left", (S, q, q) "right", (S,) "frobenius",
    None "none"), both float64.
    """
    grads = per_sample_gradients(a, b, cu_seqlens)
    if dirs is None or dirs.shape[0] == 0:
        proj = grads.new_zeros((grads.shape[0], 0))
    else:
        proj = torch.einsum("spq,kpq->sk", grads, dirs.to(torch.float64))
    if gram == "left":
        stat = grads @ grads.transpose(1, 2)
    elif gram == "right":
        stat = grads.transpose(1, 2) @ grads
    elif gram == "frobenius":
        stat = grads.square().sum(dim=(1, 2))
    else:
        stat = None
    return proj, stat


def lora_update_stats_reference(
    x: torch.Tensor,
    h: torch.Tensor,
    u: torch.Tensor,
    e: torch.Tensor,
    cu_seqlens: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    dir_A: torch.Tensor,
    dir_B: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense float64 oracle of :func:`sqsd_fast.ops.lora_update_stats` (docs/METHOD.md §3).

    Forms ``dW_s = -(G_B A + B G_A)`` (d_out x d_in) for every sample and
    ``D_k = dir_B[k] @ dir_A[k]``; returns ``dot`` (S, K) = <dW_s, D_k> and ``sqnorm`` (S,).
    """
    grad_A = per_sample_gradients(u, x, cu_seqlens)  # (S, r, d_in)
    grad_B = per_sample_gradients(e, h, cu_seqlens)  # (S, d_out, r)
    A64, B64 = A.to(torch.float64), B.to(torch.float64)
    updates = -(grad_B @ A64 + B64 @ grad_A)  # (S, d_out, d_in)
    directions = dir_B.to(torch.float64) @ dir_A.to(torch.float64)  # (K, d_out, d_in)
    dot = torch.einsum("sij,kij->sk", updates, directions)
    sqnorm = updates.square().sum(dim=(1, 2))
    return dot, sqnorm


def direction_sqnorm_reference(dir_A: torch.Tensor, dir_B: torch.Tensor) -> torch.Tensor:
    """``||dir_B[k] @ dir_A[k]||_F^2`` for every k, formed densely in float64: (K,)."""
    return (dir_B.to(torch.float64) @ dir_A.to(torch.float64)).square().sum(dim=(1, 2))
