"""The compiled backend: ``torch.ops.sqsd_fast.factor_grad_stats`` from ``sqsd_fast._C``.

Importing ``sqsd_fast._C`` registers the op (declared once in ``csrc/ops.cpp``) with its CPU
kernel and, where CUDA was compiled in, its CUDA kernel; this module adds the op's fake
(meta) kernel beside it. The import is guarded: without the extension this module still
imports and ``is_available`` says False with a build hint.
"""

from __future__ import annotations

import torch

from sqsd_fast.ops.backends import BUILD_HINT
from sqsd_fast.ops.constants import GRAM_MODES

try:
    from sqsd_fast import _C
except (ImportError, OSError) as error:  # OSError: a stale .so against another torch
    _C = None
    _LOAD_ERROR = f"{type(error).__name__}: {error}"
else:
    _LOAD_ERROR = None
# Read once: availability is checked on every op call, and build_info() formats a report.
_CUDA_COMPILED = _C is not None and bool(_C.build_info()["cuda_compiled"])

if _C is not None:

    @torch.library.register_fake("sqsd_fast::factor_grad_stats")
    def _factor_grad_stats_fake(
        a: torch.Tensor, b: torch.Tensor, cu_seqlens: torch.Tensor, dirs: torch.Tensor | None, gram: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Output shapes from input shapes (docs/CONTRACTS.md), so torch.compile and opcheck
        can trace the op without running it. Checks what the C++ op checks about shapes
        (csrc/factor_grad_stats.cpp), with the same messages, so a bad call fails clearly
        while tracing too; cu_seqlens values are only checked when the op runs.
        """
        torch._check(a.dim() == 2, lambda: f"factor_grad_stats: a must be 2-D (N, p), got shape {tuple(a.shape)}")
        torch._check(b.dim() == 2, lambda: f"factor_grad_stats: b must be 2-D (N, q), got shape {tuple(b.shape)}")
        torch._check(a.shape[0] == b.shape[0], lambda: (
            f"factor_grad_stats: a and b must have the same number of rows N, got a {tuple(a.shape)} "
            f"and b {tuple(b.shape)}"))
        torch._check(b.dtype == a.dtype,
                     lambda: f"factor_grad_stats: b must have a's dtype {a.dtype}, got {b.dtype}")
        torch._check(cu_seqlens.dim() == 1, lambda: (
            f"factor_grad_stats: cu_seqlens must be 1-D (S + 1,), got shape {tuple(cu_seqlens.shape)}"))
        torch._check(cu_seqlens.shape[0] >= 1, lambda: (
            f"factor_grad_stats: cu_seqlens must be 1-D (S + 1,), got shape {tuple(cu_seqlens.shape)}"))
        p, q = a.shape[1], b.shape[1]
        if dirs is not None:
            dirs_message = lambda: (  # noqa: E731
                f"factor_grad_stats: dirs must be (K >= 1, p={p}, q={q}), got shape {tuple(dirs.shape)}")
            torch._check(dirs.dim() == 3, dirs_message)
            torch._check(dirs.shape[0] >= 1, dirs_message)
            torch._check(dirs.shape[1] == p, dirs_message)
            torch._check(dirs.shape[2] == q, dirs_message)
        torch._check(gram in GRAM_MODES, lambda: (
            f"factor_grad_stats: gram must be one of {', '.join(map(repr, GRAM_MODES))}, got {gram!r}"))
        num_samples = cu_seqlens.shape[0] - 1
        num_dirs = 0 if dirs is None else dirs.shape[0]
        gram_shape = {
            "left": (num_samples, p, p),
            "right": (num_samples, q, q),
            "frobenius": (num_samples,),
            "none": (num_samples, 0),
        }[gram]
        proj = a.new_empty((num_samples, num_dirs), dtype=torch.float32)
        return proj, a.new_empty(gram_shape, dtype=torch.float32)


def build_info() -> dict:
    """How the extension was built, or why it is missing.

    Built: ``{"built": True, "version", "torch_version", "cuda_compiled", "cuda_version",
    "openmp", "num_threads", "parallel_info", "max_gram_side", "cuda_tile_shapes",
    "cuda_default_tile"}``; missing: ``{"built": False, "error": str}``.
    """
    if _C is None:
        return {"built": False, "error": _LOAD_ERROR}
    return {"built": True, **_C.build_info()}


def is_available(device: torch.device) -> bool:
    device = torch.device(device)
    if _C is None:
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return _CUDA_COMPILED
    return False


def unavailable_reason(device: torch.device) -> str:
    device = torch.device(device)
    if _C is None:
        return f"the compiled extension sqsd_fast._C did not load ({_LOAD_ERROR}); {BUILD_HINT}"
    if device.type == "cuda" and not _CUDA_COMPILED:
        return ("sqsd_fast._C was built without CUDA kernels (no nvcc or a CPU build of torch "
                f"at build time, or SQSD_FAST_NO_CUDA=1); on a CUDA machine {BUILD_HINT}")
    if device.type not in ("cpu", "cuda"):
        return f"the compiled extension has no kernels for {device.type} tensors"
    return ""


def factor_grad_stats(
    a: torch.Tensor, b: torch.Tensor, cu_seqlens: torch.Tensor, dirs: torch.Tensor | None, gram: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample statistics of ``G_s = sum_{t in s} a_t b_t^T`` (docs/METHOD.md §4).

    a: (N, p), b: (N, q) float32/bfloat16/float16, any strides; cu_seqlens: (S+1,) int64;
    dirs: (K, p, q) or None; gram: "left" | "right" | "frobenius" | "none".
    Returns proj (S, K) float32 and the gram statistic as float32 ((S, p, p), (S, q, q),
    (S,)) or None for "none".
    """
    if _C is None:
        raise RuntimeError(unavailable_reason(a.device))
    proj, stat = torch.ops.sqsd_fast.factor_grad_stats(a, b, cu_seqlens, dirs, gram)
    return proj, None if gram == "none" else stat
