"""Input checks shared by every backend.

Every public op validates here, once, before any kernel runs, so a bad argument gets the
same clear ``ValueError``/``TypeError`` from every backend instead of a traceback from deep
inside torch or a silently wrong score.
"""

from __future__ import annotations

import torch

from sqsd_fast.ops.constants import (  # noqa: F401  (re-exported: validation's vocabulary)
    BACKEND_NAMES,
    BACKENDS,
    FAST_INPUT_DTYPES,
    GRAM_MODES,
    REFERENCE_INPUT_DTYPES,
)


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_float_tensor(name: str, t, ndim: int, shape_doc: str, dtypes=REFERENCE_INPUT_DTYPES):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_doc}; got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape_doc} ({ndim}-D); got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have a floating dtype among ({_dtype_names(dtypes)}); got {t.dtype}")
    return t


def check_same_device(**tensors) -> torch.device:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device; got {listed}")
    return first


def check_cu_seqlens(cu_seqlens, n_rows: int, device: torch.device, check_inputs: bool = True) -> torch.Tensor:
    """Returns ``cu_seqlens`` as a contiguous int64 tensor, after checking it packs ``n_rows`` rows.

    ``check_inputs`` also reads the values (a host sync on a GPU); callers that built the
    offsets themselves (the scoring engine) skip that part. Its shape, dtype and device are
    always checked.
    """
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor of shape (S+1,); got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must have shape (S+1,) with S >= 0; got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 or int64 sample offsets; got {cu_seqlens.dtype}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens must be on the same device as a and b ({device}); got {cu_seqlens.device}")
    offsets = cu_seqlens.to(torch.int64).contiguous()
    if check_inputs:
        first, last = int(offsets[0]), int(offsets[-1])
        if first != 0:
            raise ValueError(f"cu_seqlens must start at 0; got cu_seqlens[0] = {first}")
        if offsets.numel() > 1 and bool((offsets[1:] < offsets[:-1]).any()):
            bad = int(torch.nonzero(offsets[1:] < offsets[:-1])[0, 0])
            raise ValueError(
                f"cu_seqlens must be non-decreasing; got cu_seqlens[{bad}] = {int(offsets[bad])} > "
                f"cu_seqlens[{bad + 1}] = {int(offsets[bad + 1])}"
            )
        if last != n_rows:
            raise ValueError(f"cu_seqlens must end at N = {n_rows} (the rows of a and b); got cu_seqlens[-1] = {last}")
    return offsets


def check_factor_grad_stats_inputs(a, b, cu_seqlens, dirs, gram, backend, check_inputs: bool = True):
    """Validates the arguments of :func:`sqsd_fast.ops.factor_grad_stats`.

    Returns ``(a, b, cu_seqlens_int64, dirs_or_None, gram, backend)``; ``dirs`` with K = 0
    becomes None.
    """
    backend = check_choice("backend", backend, BACKENDS)
    gram = check_choice("gram", gram, GRAM_MODES)
    dtypes = REFERENCE_INPUT_DTYPES if backend == "reference" else FAST_INPUT_DTYPES
    check_float_tensor("a", a, 2, "(N, p)", dtypes)
    check_float_tensor("b", b, 2, "(N, q)", dtypes)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must have the same number of rows N; got a {tuple(a.shape)} and b {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"a and b must have the same dtype; got a {a.dtype} and b {b.dtype}")
    if dirs is not None:
        check_float_tensor("dirs", dirs, 3, "(K, p, q)", REFERENCE_INPUT_DTYPES)
        if tuple(dirs.shape[1:]) != (a.shape[1], b.shape[1]):
            raise ValueError(
                f"dirs must have shape (K, p, q) = (K, {a.shape[1]}, {b.shape[1]}) to match a (N, p) and b (N, q); "
                f"got {tuple(dirs.shape)}"
            )
        if dirs.shape[0] == 0:
            dirs = None
    device = check_same_device(a=a, b=b, dirs=dirs)
    offsets = check_cu_seqlens(cu_seqlens, a.shape[0], device, check_inputs)
    return a, b, offsets, dirs, gram, backend


def check_direction_factors(dir_A, dir_B):
    check_float_tensor("dir_A", dir_A, 3, "(K, r_d, d_in)")
    check_float_tensor("dir_B", dir_B, 3, "(K, d_out, r_d)")
    if dir_A.shape[0] != dir_B.shape[0] or dir_A.shape[1] != dir_B.shape[2]:
        raise ValueError(
            "dir_A (K, r_d, d_in) and dir_B (K, d_out, r_d) must agree on K and r_d; "
            f"got dir_A {tuple(dir_A.shape)} and dir_B {tuple(dir_B.shape)}"
        )
    check_same_device(dir_A=dir_A, dir_B=dir_B)


def check_lora_factors(A, B, dir_A, dir_B):
    check_float_tensor("A", A, 2, "(r, d_in)")
    check_float_tensor("B", B, 2, "(d_out, r)")
    if B.shape[1] != A.shape[0]:
        raise ValueError("A (r, d_in) and B (d_out, r) must share the rank r; "
                         f"got A {tuple(A.shape)} and B {tuple(B.shape)}")
    check_direction_factors(dir_A, dir_B)
    if dir_A.shape[2] != A.shape[1] or dir_B.shape[1] != B.shape[0]:
        raise ValueError(
            f"directions must act on the same d_out x d_in = {B.shape[0]} x {A.shape[1]} weight as A and B; "
            f"got dir_A {tuple(dir_A.shape)} (K, r_d, d_in) and dir_B {tuple(dir_B.shape)} (K, d_out, r_d)"
        )
    check_same_device(A=A, B=B, dir_A=dir_A, dir_B=dir_B)


def check_lora_activations(x, h, u, e, A, B, V_A, V_B):
    r, d_in = A.shape
    d_out = B.shape[0]
    expected = {"x": (x, d_in, "(N, d_in)"), "h": (h, r, "(N, r)"), "u": (u, r, "(N, r)"),
                "e": (e, d_out, "(N, d_out)")}
    for name, (t, width, doc) in expected.items():
        check_float_tensor(name, t, 2, doc)
        if t.shape[1] != width:
            raise ValueError(
                f"{name} must have shape {doc} with {doc[4:-1]} = {width} "
                f"(from A {tuple(A.shape)}, B {tuple(B.shape)}); got {tuple(t.shape)}"
            )
        if t.shape[0] != x.shape[0]:
            raise ValueError("x, h, u, e must have the same number of rows N; "
                             f"got x {tuple(x.shape)} and {name} {tuple(t.shape)}")
    if V_A.shape[1:] != A.shape or V_B.shape[1:] != B.shape or V_A.shape[0] != V_B.shape[0]:
        raise ValueError(
            f"V_A must be (K, r, d_in) = (K, {r}, {d_in}) and V_B (K, d_out, r) = (K, {d_out}, {r}); "
            f"got V_A {tuple(V_A.shape)} and V_B {tuple(V_B.shape)}"
        )
    check_same_device(x=x, h=h, u=u, e=e, A=A, B=B)
