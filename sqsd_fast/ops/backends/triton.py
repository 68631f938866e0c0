"""Triton backend of ``factor_grad_stats`` (docs/METHOD.md §4, docs/CONTRACTS.md).

One program per (sample, p-tile, q-tile) accumulates its tile of the per-sample gradient
G_s = sum_t a_t b_t^T in registers over the sample's rows, then reduces the tile against
the direction tiles (projections) and against itself (Gram statistic). Each program writes
one partial per statistic; partials are summed over tiles with ``torch.sum`` in a fixed
order, so results are deterministic (no atomics) and G_s never reaches memory.

The launcher is a ``torch.library.triton_op`` (``sqsd_fast::factor_grad_stats_triton``),
so ``torch.compile`` can see and trace the kernel; callers reach it through the public op
``sqsd_fast.ops.factor_grad_stats(..., backend="triton")``. On CPU tensors the kernel runs under
Triton's interpreter (``TRITON_INTERPRET=1`` before this module is imported); that is for
testing only.
"""
from __future__ import annotations

import functools
import os

import torch

from sqsd_fast.ops.constants import MAX_GRAM_SIDE

try:
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    _TRITON_IMPORT_ERROR: Exception | None = None
except Exception as exc:  # ImportError, or a broken install: the package must still import
    triton = None
    _TRITON_IMPORT_ERROR = exc

# MAX_GRAM_SIDE is the widest short side one tile may hold: "left" needs all of p in one
# tile (p <= MAX_GRAM_SIDE), "right" all of q. Larger sizes take the torch Gram-form
# fallback below, as in the CUDA backend.

_GRAM_CODES = {"none": 0, "left": 1, "right": 2, "frobenius": 3}


def _kernel_is_interpreted() -> bool:
    return triton is not None and isinstance(_factor_grad_stats_kernel, InterpretedFunction)


def is_available(device: torch.device) -> bool:
    return unavailable_reason(device) == ""


def unavailable_reason(device: torch.device) -> str:
    """Empty string when available, else one sentence saying how to get this backend."""
    device = torch.device(device)
    if triton is None:
        return f"Triton is not importable ({_TRITON_IMPORT_ERROR}); install triton to use the 'triton' backend."
    if device.type == "cuda":
        if torch.cuda.is_available():
            return ""
        return "No CUDA device is available; the 'triton' backend needs a CUDA GPU (or TRITON_INTERPRET=1 on CPU)."
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1" and _kernel_is_interpreted():
            return ""
        return ("The 'triton' backend runs on CPU tensors only under Triton's interpreter: set "
                "TRITON_INTERPRET=1 before importing sqsd_fast (slow; meant for tests).")
    return f"The 'triton' backend supports cuda (and cpu under TRITON_INTERPRET=1), not {device.type}."


if triton is not None:

    @triton.jit
    def _factor_grad_stats_kernel(
        a_ptr, b_ptr, cu_ptr, dirs_ptr, proj_part_ptr, gram_part_ptr,
        p, q, K,
        stride_an, stride_ap, stride_bn, stride_bq,
        stride_dk, stride_dp, stride_dq,
        GRAM: tl.constexpr,  # 0 none, 1 left, 2 right, 3 frobenius (see _GRAM_CODES)
        DOT_IN_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
    ):
        s = tl.program_id(0).to(tl.int64)
        p_tile = tl.program_id(1)
        q_tile = tl.program_id(2)
        n_p_tiles = tl.num_programs(1)
        n_q_tiles = tl.num_programs(2)
        # int64 row indices: N * stride can pass 2**31 on long batches of wide layers.
        start = tl.load(cu_ptr + s)
        end = tl.load(cu_ptr + s + 1)

        offs_p = p_tile * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_q = q_tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
        mask_p = offs_p < p
        mask_q = offs_q < q
        offs_t = tl.arange(0, BLOCK_T)

        g = tl.zeros((BLOCK_P, BLOCK_Q), dtype=tl.float32)
        for t0 in range(start, end, BLOCK_T):
            rows = t0 + offs_t
            mask_t = rows < end
            a_chunk = tl.load(a_ptr + rows[:, None] * stride_an + offs_p[None, :] * stride_ap,
                              mask=mask_t[:, None] & mask_p[None, :], other=0.0)
            b_chunk = tl.load(b_ptr + rows[:, None] * stride_bn + offs_q[None, :] * stride_bq,
                              mask=mask_t[:, None] & mask_q[None, :], other=0.0)
            if DOT_IN_FP32:
                # Triton's interpreter keeps bf16 as raw uint16 and its dot would multiply
                # the bit patterns; fp32 products of bf16 values are exact, so same result.
                a_chunk = a_chunk.to(tl.float32)
                b_chunk = b_chunk.to(tl.float32)
            # bf16/fp16 run on tensor cores with fp32 accumulation; DOT_PRECISION is "ieee"
            # for fp32 inputs because tf32 (10-bit mantissa) would miss the 1e-4 tolerance.
            g = tl.dot(tl.trans(a_chunk), b_chunk, g, input_precision=DOT_PRECISION)

        # Padding entries of g can hold 0 * inf = NaN from non-finite valid entries; zero them
        # so only the sample's own values reach the reductions.
        tile_mask = mask_p[:, None] & mask_q[None, :]
        g = tl.where(tile_mask, g, 0.0)

        tile = p_tile * n_q_tiles + q_tile
        n_tiles = n_p_tiles * n_q_tiles
        d_ptrs = dirs_ptr + offs_p[:, None] * stride_dp + offs_q[None, :] * stride_dq
        for k in range(0, K):
            d = tl.load(d_ptrs, mask=tile_mask, other=0.0)
            tl.store(proj_part_ptr + (s * n_tiles + tile) * K + k, tl.sum(g * d.to(tl.float32)))
            d_ptrs += stride_dk  # pointer steps stay 64-bit, unlike an i32 k * stride_dk

        if GRAM == 1:  # left: this tile spans all of p; partial (G G^T) over its q columns
            gg = tl.dot(g, tl.trans(g), input_precision="ieee")
            base = (s * n_q_tiles + q_tile) * p * p
            tl.store(gram_part_ptr + base + offs_p[:, None] * p + offs_p[None, :], gg,
                     mask=mask_p[:, None] & mask_p[None, :])
        elif GRAM == 2:  # right: this tile spans all of q; partial (G^T G) over its p rows
            gg = tl.dot(tl.trans(g), g, input_precision="ieee")
            base = (s * n_p_tiles + p_tile) * q * q
            tl.store(gram_part_ptr + base + offs_q[:, None] * q + offs_q[None, :], gg,
                     mask=mask_q[:, None] & mask_q[None, :])
        elif GRAM == 3:
            tl.store(gram_part_ptr + s * n_tiles + tile, tl.sum(g * g))


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _pick_tiles(p: int, q: int, gram: str, n_samples: int = 0, min_programs: int = 0) -> tuple[int, int, int, int]:
    """(BLOCK_T, BLOCK_P, BLOCK_Q, num_warps) for a p x q gradient. Not yet timed on a GPU.

    The op is memory-bound for LoRA ranks (~r flops per byte read), so the aim is to read
    a and b once with many programs in flight. The Gram side (rank r) is one padded tile;
    the long side (d = 4096) is cut into 64-wide tiles for r <= 32: 64 programs per sample,
    so S = 4 already gives two programs per SM of an H100 (132 SMs), and the small factor
    is re-read once per tile (r/64 of a b-read at r = 16, mostly from L2).
    Register budget, from ptxas on sm_90 (bf16, 3 stages): 16x64 tile 94 regs, 32x64 124,
    64x32 168, 128x32 at 8 warps 216, 64x64 frobenius 126, none spilling; 64x64 with a
    64x64 Gram and 128x64 spill, hence the 32-wide long tile for r >= 64.
    Few, long samples give few programs: the long tile then narrows (down to 16) until
    n_samples * tiles >= min_programs (4 per SM on CUDA), trading more L2 re-reads of the
    small factor for enough loads in flight.
    BLOCK_T = 64 rows per step loads 8 KiB of bf16 b per 64-wide tile; Triton pipelines
    these loads (cp.async) when the feature stride is 1.
    """
    if gram in ("left", "right"):
        short = _pow2_at_least_16(p if gram == "left" else q)
        long_dim = q if gram == "left" else p
        long = min(_pow2_at_least_16(long_dim), 64 if short <= 32 else 32)
        while long > 16 and n_samples * triton.cdiv(long_dim, long) < min_programs:
            long //= 2
        block_p, block_q = (short, long) if gram == "left" else (long, short)
    else:
        block_p = min(_pow2_at_least_16(p), 64)
        block_q = min(_pow2_at_least_16(q), 64)
    num_warps = 8 if max(block_p, block_q) >= 128 else 4
    return 64, block_p, block_q, num_warps


if triton is not None:

    @torch.library.triton_op("sqsd_fast::factor_grad_stats_triton", mutates_args=())
    def factor_grad_stats_triton_forward(
        a: torch.Tensor, b: torch.Tensor, cu_seqlens: torch.Tensor, dirs: torch.Tensor | None, gram: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel launcher. a: (N, p), b: (N, q), cu_seqlens: (S+1,) int64, dirs: (K, p, q) or None.

        Returns proj (S, K) float32 and the gram statistic as float32: (S, p, p) "left",
        (S, q, q) "right", (S,) "frobenius", an empty (0,) tensor for "none". Needs
        p <= MAX_GRAM_SIDE for "left" and q <= MAX_GRAM_SIDE for "right".
        """
        n_samples = cu_seqlens.shape[0] - 1
        p, q = a.shape[1], b.shape[1]
        n_dirs = 0 if dirs is None else dirs.shape[0]
        if (gram == "left" and p > MAX_GRAM_SIDE) or (gram == "right" and q > MAX_GRAM_SIDE):
            raise ValueError(f"gram={gram!r} needs its side <= {MAX_GRAM_SIDE} here; got p={p}, q={q}")
        # Ask for 4 programs per SM; the interpreter (CPU) runs one program at a time.
        min_programs = 4 * _sm_count(a.device) if a.device.type == "cuda" else 0
        block_t, block_p, block_q, num_warps = _pick_tiles(p, q, gram, n_samples, min_programs)
        n_p_tiles, n_q_tiles = triton.cdiv(p, block_p), triton.cdiv(q, block_q)

        f32 = dict(dtype=torch.float32, device=a.device)
        proj_part = torch.zeros(n_samples, n_p_tiles * n_q_tiles, n_dirs, **f32)
        gram_part = {
            "none": lambda: torch.zeros(0, **f32),
            "left": lambda: torch.zeros(n_samples, n_q_tiles, p, p, **f32),
            "right": lambda: torch.zeros(n_samples, n_p_tiles, q, q, **f32),
            "frobenius": lambda: torch.zeros(n_samples, n_p_tiles * n_q_tiles, **f32),
        }[gram]()
        if n_samples > 0 and p > 0 and q > 0:
            dirs_arg = a if dirs is None else dirs  # never read when K == 0
            dirs_strides = (0, 0, 0) if dirs is None else dirs.stride()
            wrap = torch.library.wrap_triton(_factor_grad_stats_kernel)
            wrap[(n_samples, n_p_tiles, n_q_tiles)](
                a, b, cu_seqlens, dirs_arg, proj_part, gram_part,
                p, q, n_dirs,
                a.stride(0), a.stride(1), b.stride(0), b.stride(1), *dirs_strides,
                GRAM=_GRAM_CODES[gram],
                DOT_IN_FP32=(a.device.type == "cpu" and a.dtype == torch.bfloat16),
                # "tf32" is Triton's default and only changes fp32 operands; say "ieee" for them.
                DOT_PRECISION="ieee" if a.dtype == torch.float32 else "tf32",
                BLOCK_T=block_t, BLOCK_P=block_p, BLOCK_Q=block_q,
                num_warps=num_warps,
            )
        proj = proj_part.sum(dim=1)
        gram_out = gram_part if gram == "none" else gram_part.sum(dim=1)
        return proj, gram_out


def _gram_by_token_gram(a: torch.Tensor, b: torch.Tensor, cu_seqlens: torch.Tensor, side: str) -> torch.Tensor:
    """Per-sample G G^T ("left") or G^T G ("right") without forming G_s.

    G G^T = a_s^T (b_s b_s^T) a_s: cost O(T_s^2 (p + q)) and a T_s x T_s buffer per sample.
    Used only when the Gram side is too wide for one register tile; needs a host sync.
    """
    outer, inner = (a, b) if side == "left" else (b, a)
    bounds = cu_seqlens.tolist()
    width = outer.shape[1]
    out = torch.zeros(len(bounds) - 1, width, width, dtype=torch.float32, device=a.device)
    for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        if hi > lo:
            o, i = outer[lo:hi].float(), inner[lo:hi].float()
            out[s] = o.T @ ((i @ i.T) @ o)
    return out


def factor_grad_stats(
    a: torch.Tensor, b: torch.Tensor, cu_seqlens: torch.Tensor, dirs: torch.Tensor | None, gram: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Backend entry (docs/CONTRACTS.md): proj (S, K) float32 and the gram statistic or None."""
    if a.device.type == "cuda":
        # Triton launches on the current CUDA device; make it the tensors' one.
        with torch.cuda.device(a.device):
            return _factor_grad_stats(a, b, cu_seqlens, dirs, gram)
    return _factor_grad_stats(a, b, cu_seqlens, dirs, gram)


def _factor_grad_stats(a, b, cu_seqlens, dirs, gram):
    reason = unavailable_reason(a.device)
    if reason:
        raise RuntimeError(reason)
    wide_left = gram == "left" and a.shape[1] > MAX_GRAM_SIDE
    wide_right = gram == "right" and b.shape[1] > MAX_GRAM_SIDE
    kernel_gram = "none" if (wide_left or wide_right) else gram
    proj, gram_out = factor_grad_stats_triton_forward(a, b, cu_seqlens, dirs, kernel_gram)
    if wide_left or wide_right:
        return proj, _gram_by_token_gram(a, b, cu_seqlens, gram)
    return proj, (None if gram == "none" else gram_out)
