"""Assertions and input builders shared by the tests."""

from __future__ import annotations

import torch

# sqsd.md §4: ||out - ref|| / ||ref|| against a float64 reference.
RELATIVE_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float64: 1e-12}


def assert_relative_close(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """Fails with where and how badly ``out`` differs from the float64 ``ref``."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out64).all(), f"{name}: non-finite values at {torch.nonzero(~torch.isfinite(out64))[:5].tolist()}"
    denom = ref64.norm().item()
    err = (out64 - ref64).norm().item()
    rel = err / denom if denom > 0 else err
    if rel > tol:
        worst = torch.argmax((out64 - ref64).abs().flatten()).item()
        index = tuple(torch.unravel_index(torch.tensor(worst), out64.shape)) if out64.dim() else ()
        raise AssertionError(
            f"{name}: relative error {rel:.3e} > {tol:.0e}; worst at {[int(i) for i in index]}: "
            f"{out64.flatten()[worst].item():.6g} vs reference {ref64.flatten()[worst].item():.6g}"
        )


def random_cu_seqlens(lengths) -> torch.Tensor:
    return torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as ``t`` in a strided view (every other column of a wider buffer)."""
    wide = torch.randn(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    view = wide[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous()
    return view
