"""Public ops: per-sample factor-gradient statistics and their LoRA composition.

One interface, several backends (``"reference"``, ``"cpp"``, ``"triton"``), chosen per call
with ``backend=`` or automatically (``"auto"``) for the tensors' device. Every backend is
reached through :func:`factor_grad_stats`, which validates the inputs once.
"""

from __future__ import annotations

import importlib
import warnings
from functools import lru_cache
from types import ModuleType

import torch

from sqsd_fast.ops import validation as checks
from sqsd_fast.ops.backends import BUILD_HINT
from sqsd_fast.ops.constants import BACKEND_NAMES, BACKENDS

# The module of each backend is named after it, except the reference's: ``ops/reference.py``
# holds the float64 math itself, its backend face is the oracle beside the fast backends.
_BACKEND_MODULES = {name: f"sqsd_fast.ops.backends.{'float64_oracle' if name == 'reference' else name}"
                    for name in BACKEND_NAMES}
# Tried in order by backend="auto". On CUDA both fast backends exist; which one wins is a
# benchmark question (benchmarks/bench_kernels.py), so the order here is only a default.
_AUTO_ORDER = {"cuda": ("triton", "cpp"), "cpu": ("cpp",)}


@lru_cache(maxsize=None)
def _backend_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(_BACKEND_MODULES[name])
    except ImportError:
        return None


def backend_available(name: str, device: torch.device | str = "cpu") -> bool:
    """Whether ``backend=name`` (``"reference"``, ``"cpp"``, ``"triton"``) can run on ``device``
    in this installation."""
    module = _backend_module(checks.check_choice("backend", name, BACKEND_NAMES))
    return module is not None and module.is_available(torch.device(device))


def backend_unavailable_reason(name: str, device: torch.device | str = "cpu") -> str:
    """Why ``backend=name`` cannot run on ``device`` and how to get it; ``""`` when it can."""
    module = _backend_module(checks.check_choice("backend", name, BACKEND_NAMES))
    if module is None:
        return "its module failed to import"
    return module.unavailable_reason(torch.device(device))


def build_info() -> dict:
    """Facts about the compiled extension ``sqsd_fast._C``.

    Built: ``{"built": True, "version", "torch_version", "cuda_compiled", "cuda_version",
    "openmp", "num_threads", "parallel_info", "max_gram_side", "cuda_tile_shapes",
    "cuda_default_tile"}``; not built: ``{"built": False, "error": str}``.
    """
    try:
        from sqsd_fast.ops.backends import cpp  # noqa: PLC0415 (the extension may be unbuilt: reported, not raised)
    except ImportError as error:
        return {"built": False, "error": str(error)}
    return cpp.build_info()


@lru_cache(maxsize=None)
def _warn_reference_fallback(device_type: str, reason: str) -> None:
    # lru_cache makes this warn once per (device, reason), not once per module per batch.
    # The cpp backend's own reason already carries the build hint; say it once.
    hint = "" if BUILD_HINT in reason else f" To get the fast one, {BUILD_HINT}."
    warnings.warn(
        f"sqsd_fast: no fast backend is available for {device_type} tensors ({reason}); "
        f"using the slow float64 reference.{hint}",
        RuntimeWarning,
        stacklevel=3,
    )


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turns ``"auto"`` into the fastest available backend name for ``device``; checks that a
    named one can run there (``RuntimeError`` saying why not)."""
    backend = checks.check_choice("backend", backend, BACKENDS)
    if backend != "auto":
        if not backend_available(backend, device):
            reason = backend_unavailable_reason(backend, device)
            raise RuntimeError(f"backend={backend!r} is not available for {device.type} tensors: {reason}")
        return backend
    reasons = []
    for name in _AUTO_ORDER.get(device.type, ()):
        module = _backend_module(name)
        if module is not None and module.is_available(device):
            return name
        reasons.append(f"{name}: " + (module.unavailable_reason(device) if module else "module failed to import"))
    _warn_reference_fallback(device.type, "; ".join(reasons) or "none is built for this device")
    return "reference"


def factor_grad_stats(
    a: torch.Tensor,
    b: torch.Tensor,
    cu_seqlens: torch.Tensor,
    dirs: torch.Tensor | None = None,
    gram: str = "none",
    backend: str = "auto",
    check_inputs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample statistics of ``G_s = sum_{t in s} a_t b_t^T`` without forming ``G_s`` (docs/METHOD.md §4).

    Args:
        a: (N, p) and b: (N, q), float32 / bfloat16 / float16 (float64 for the reference),
            the same dtype; any strides. Rows of sample s are ``cu_seqlens[s]:cu_seqlens[s+1]``.
        cu_seqlens: (S+1,) int32/int64 offsets, 0 = c[0] <= ... <= c[S] = N.
        dirs: (K, p, q) directions, or None.
        gram: "left" -> (S, p, p) ``G G^T``; "right" -> (S, q, q) ``G^T G``;
            "frobenius" -> (S,) ``||G||_F^2``; "none" -> None.
        backend: "auto", "reference", "cpp" or "triton".
        check_inputs: also check the values of ``cu_seqlens`` (a host sync on GPU). Shapes,
            dtypes and devices are always checked.

    Returns:
        ``(proj, gram)``: proj (S, K) float32 with ``proj[s, k] = <G_s, dirs[k]>`` ((S, 0)
        when dirs is None) and the gram statistic in float32 (or None).
    """
    a, b, offsets, dirs, gram, backend = checks.check_factor_grad_stats_inputs(
        a, b, cu_seqlens, dirs, gram, backend, check_inputs=check_inputs
    )
    name = resolve_backend(backend, a.device)
    with torch.no_grad():
        return _backend_module(name).factor_grad_stats(a, b, offsets, dirs, gram)


def project_directions(
    A: torch.Tensor, B: torch.Tensor, dir_A: torch.Tensor, dir_B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The directions as seen by the factor gradients at the state (A, B) (docs/METHOD.md §3).

    A: (r, d_in), B: (d_out, r), dir_A: (K, r_d, d_in), dir_B: (K, d_out, r_d).
    Returns float32 ``V_A = (B^T dir_B) dir_A``: (K, r, d_in) and ``V_B = dir_B (dir_A A^T)``:
    (K, d_out, r), so that ``<dW, D> = -(<G_A, V_A> + <G_B, V_B>)``.
    """
    checks.check_lora_factors(A, B, dir_A, dir_B)
    with torch.no_grad():
        A32, B32 = A.float(), B.float()
        dA, dB = dir_A.float(), dir_B.float()
        V_A = (B32.T @ dB) @ dA
        V_B = dB @ (dA @ A32.T)
    return V_A, V_B


def lora_update_stats_projected(
    x: torch.Tensor,
    h: torch.Tensor,
    u: torch.Tensor,
    e: torch.Tensor,
    cu_seqlens: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    V_A: torch.Tensor,
    V_B: torch.Tensor,
    backend: str = "auto",
    check_inputs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lora_update_stats` with the directions already passed through :func:`project_directions`.

    Use it to reuse ``V_A`` (K, r, d_in) and ``V_B`` (K, d_out, r) across batches of one
    (state, direction) pair. The other arguments and the result ((S, K) ``dot``, (S,)
    ``sqnorm``, float32) are those of :func:`lora_update_stats`.
    """
    checks.check_lora_activations(x, h, u, e, A, B, V_A, V_B)
    with torch.no_grad():
        proj_A, gram_A = factor_grad_stats(u, x, cu_seqlens, V_A, "left", backend, check_inputs)
        proj_B, gram_B = factor_grad_stats(e, h, cu_seqlens, V_B, "right", backend, check_inputs)
        _, cross = factor_grad_stats(h, u, cu_seqlens, None, "frobenius", backend, False)
        A32, B32 = A.float(), B.float()
        sqnorm = update_sqnorm_from_grams(gram_A, gram_B, cross, A32 @ A32.T, B32.T @ B32)
        dot = -(proj_A + proj_B)
    return dot, sqnorm


def update_sqnorm_from_grams(gram_A: torch.Tensor, gram_B: torch.Tensor, cross: torch.Tensor,
                             gram_AAt: torch.Tensor, gram_BtB: torch.Tensor) -> torch.Tensor:
    """``||dW_s||_F^2`` of the induced updates ``dW_s = -(G_B A + B G_A)`` from the factor
    gradients' Gram statistics (docs/METHOD.md §3), the one place this identity is written:

        ||dW||^2 = <G_B^T G_B, A A^T> + <G_A G_A^T, B^T B> + 2 ||H^T U||_F^2

    gram_A: (S, r, r) ``G_A G_A^T`` (``factor_grad_stats(u, x, ..., "left")``); gram_B:
    (S, r, r) ``G_B^T G_B`` (``(e, h, ..., "right")``); cross: (S,) ``||H^T U||_F^2``
    (``(h, u, ..., "frobenius")``: the cross term ``2 <G_B A, B G_A>``); gram_AAt (r, r) =
    ``A A^T`` and gram_BtB (r, r) = ``B^T B`` of the state. Computed in the arguments' dtype
    (the caller chooses the precision); returns (S,)."""
    return (gram_B * gram_AAt).sum(dim=(1, 2)) + (gram_A * gram_BtB).sum(dim=(1, 2)) + 2.0 * cross


def lora_update_stats(
    x: torch.Tensor,
    h: torch.Tensor,
    u: torch.Tensor,
    e: torch.Tensor,
    cu_seqlens: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    dir_A: torch.Tensor,
    dir_B: torch.Tensor,
    backend: str = "auto",
    check_inputs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner products and norms of one LoRA module's per-sample induced updates (docs/METHOD.md §3).

    For sample s the induced update is ``dW_s = -(G_B A + B G_A)`` with
    ``G_A = sum_t u_t x_t^T`` and ``G_B = sum_t e_t h_t^T``; direction k is
    ``D_k = dir_B[k] @ dir_A[k]``. No d_out x d_in matrix is formed.

    Args:
        x: (N, d_in) input of lora_A; h: (N, r) input of lora_B (= A x);
        u: (N, r) gradient at the output of lora_A (= B^T e); e: (N, d_out) gradient at the
            output of lora_B (including the LoRA scaling). One dtype for all four.
        cu_seqlens: (S+1,) sample offsets into the N rows.
        A: (r, d_in), B: (d_out, r): the state's LoRA factors.
        dir_A: (K, r_d, d_in), dir_B: (K, d_out, r_d): the directions' factors.
        backend, check_inputs: as in :func:`factor_grad_stats`.

    Returns:
        ``dot`` (S, K) = ``<dW_s, D_k>`` and ``sqnorm`` (S,) = ``||dW_s||_F^2``, float32.
        The norm identity assumes h = A x and u = B^T e, as captured from a LoRA module.
    """
    V_A, V_B = project_directions(A, B, dir_A, dir_B)
    return lora_update_stats_projected(x, h, u, e, cu_seqlens, A, B, V_A, V_B, backend, check_inputs)


def direction_sqnorm(dir_A: torch.Tensor, dir_B: torch.Tensor) -> torch.Tensor:
    """``||dir_B[k] @ dir_A[k]||_F^2`` for each k, as ``<B_d^T B_d, A_d A_d^T>``.

    dir_A: (K, r_d, d_in), dir_B: (K, d_out, r_d). Returns (K,) float32 (computed in float64).
    """
    checks.check_direction_factors(dir_A, dir_B)
    with torch.no_grad():
        dA, dB = dir_A.double(), dir_B.double()
        gram_B = dB.transpose(1, 2) @ dB  # (K, r_d, r_d)
        gram_A = dA @ dA.transpose(1, 2)  # (K, r_d, r_d)
        return (gram_B * gram_A).sum(dim=(1, 2)).float()
