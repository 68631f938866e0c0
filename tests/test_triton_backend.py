"""The Triton backend of factor_grad_stats against the float64 reference (docs/METHOD.md §4).

Every call goes through the public op ``sqsd_fast.ops.factor_grad_stats(..., backend="triton")``,
as users reach it; the op registered with ``torch.library.triton_op`` is called directly only
to check that registration (opcheck, torch.compile).

Without a GPU the kernel runs on CPU tensors under Triton's interpreter (tests/conftest.py
sets TRITON_INTERPRET=1), which is slow: shapes stay small. Lengths such as 70 and 25 are
not multiples of BLOCK_T = 64, and 70 > 64 makes the row loop take two steps.
"""

from __future__ import annotations

import math

import pytest
import torch

from sqsd_fast.ops import backend_available, backend_unavailable_reason, factor_grad_stats
from sqsd_fast.ops.constants import MAX_GRAM_SIDE
from sqsd_fast.ops.reference import factor_grad_stats_reference
from sqsd_fast.testing.assertions import (assert_relative_close, missing_backend, non_contiguous,
                                         random_cu_seqlens)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_REASON, _FAILS = missing_backend("triton", DEVICE)
if _FAILS:   # SQSD_FAST_REQUIRE_EXTENSION=1: the interpreter must work here
    pytest.fail(_REASON, pytrace=False)
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)


def triton_stats(a, b, cu, dirs, gram):
    """The public op on the Triton backend: proj (S, K) and the gram statistic (or None)."""
    return factor_grad_stats(a, b, cu, dirs, gram, backend="triton")


def requires_cuda(test):
    """The `gpu` marker of pytest.ini, skipped without a CUDA device."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


GRAMS = ("left", "right", "frobenius", "none")


@pytest.fixture(autouse=True)
def _no_tf32():
    # docs/METHOD.md §4: the GPU tolerance 1e-4 for fp32 assumes tf32 is off (it only matters for
    # the torch fallback; the kernel's fp32 dots always use "ieee").
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def tolerance(dtype: torch.dtype) -> float:
    if dtype == torch.float32:
        return 1e-4 if DEVICE.type == "cuda" else 1e-5
    return 1e-2


def make_inputs(lengths, p, q, n_dirs, dtype, seed, strided=True, dirs_dtype=torch.float32):
    """Random (never zero) a (N, p), b (N, q), dirs (K, p, q); strided views when asked."""
    gen = torch.Generator().manual_seed(seed)
    n_rows = sum(lengths)
    a = torch.randn(n_rows, p, generator=gen).to(dtype)
    b = torch.randn(n_rows, q, generator=gen).to(dtype)
    dirs = torch.randn(n_dirs, q, p, generator=gen).to(dirs_dtype).transpose(1, 2) if n_dirs else None
    if strided:
        a, b = non_contiguous(a), b.T.contiguous().T  # every-other-column view; column-major

    def move(t):
        return t if t is None else t.to(DEVICE)

    return move(a), move(b), random_cu_seqlens(lengths).to(DEVICE), move(dirs)


def check_against_reference(a, b, cu, dirs, gram, tol):
    proj, stat = triton_stats(a, b, cu, dirs, gram)
    ref_proj, ref_stat = factor_grad_stats_reference(a, b, cu, dirs, gram)
    assert proj.dtype == torch.float32 and proj.device == a.device
    if ref_proj.numel():
        assert_relative_close("proj", proj, ref_proj, tol)
    else:
        assert proj.shape == ref_proj.shape
    if gram == "none":
        assert stat is None
    else:
        assert stat.dtype == torch.float32
        assert_relative_close(f"gram {gram}", stat, ref_stat, tol)
    return proj, stat


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gram", GRAMS)
@pytest.mark.parametrize("p, q", [(5, 19), (19, 1), (1, 5)])
def test_matches_reference(dtype, gram, p, q):
    a, b, cu, dirs = make_inputs([70, 0, 25], p, q, 3, dtype, seed=p * 100 + q)
    check_against_reference(a, b, cu, dirs, gram, tolerance(dtype))


@pytest.mark.parametrize("n_dirs", [0, 1, 3])
@pytest.mark.parametrize("lengths", [[37], [3, 0, 70]])
def test_sample_and_direction_counts(n_dirs, lengths):
    a, b, cu, dirs = make_inputs(lengths, 7, 11, n_dirs, torch.float32, seed=len(lengths) + n_dirs)
    proj, _ = check_against_reference(a, b, cu, dirs, "frobenius", 1e-5 if DEVICE.type == "cpu" else 1e-4)
    assert proj.shape == (len(lengths), n_dirs)


def test_zero_direction_tensor_and_no_samples():
    a, b, cu, _ = make_inputs([9, 4], 5, 6, 0, torch.float32, seed=1)
    proj, _ = triton_stats(a, b, cu, torch.randn(0, 5, 6, device=DEVICE), "none")
    assert proj.shape == (2, 0)
    empty = torch.zeros(0, 5, device=DEVICE)
    proj, stat = triton_stats(empty, empty[:, :3], cu[:1], None, "left")
    assert proj.shape == (0, 0) and stat.shape == (0, 5, 5)
    all_empty = torch.zeros(3, dtype=torch.int64, device=DEVICE)  # S = 2 samples, N = 0 rows
    dirs = torch.randn(1, 5, 3, device=DEVICE)
    proj, stat = triton_stats(empty, empty[:, :3], all_empty, dirs, "right")
    assert torch.equal(proj, torch.zeros(2, 1, device=DEVICE))
    assert torch.equal(stat, torch.zeros(2, 3, 3, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "gram, p, q",
    [("left", 5, 70), ("right", 70, 6), ("left", 150, 7), ("right", 6, 131), ("frobenius", 70, 80), ("none", 80, 70)],
)
def test_wide_sides(dtype, gram, p, q):
    # 70 and 80 span two 64-wide tiles, so per-tile partials are summed; left p > MAX_GRAM_SIDE
    # (128) and right q > MAX_GRAM_SIDE take the torch Gram-form fallback.
    a, b, cu, dirs = make_inputs([70, 0, 13], p, q, 2, dtype, seed=p + q)
    check_against_reference(a, b, cu, dirs, gram, tolerance(dtype))


@pytest.mark.parametrize("dirs_dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_direction_dtypes(dirs_dtype):
    a, b, cu, dirs = make_inputs([20, 9], 5, 19, 2, torch.bfloat16, seed=3, dirs_dtype=dirs_dtype)
    check_against_reference(a, b, cu, dirs, "left", 1e-2)


@pytest.mark.parametrize("gram", GRAMS)
def test_empty_samples_are_exact_zeros(gram):
    a, b, cu, dirs = make_inputs([0, 33, 0], 5, 19, 2, torch.bfloat16, seed=4)
    proj, stat = triton_stats(a, b, cu, dirs, gram)
    for s in (0, 2):
        assert torch.equal(proj[s], torch.zeros_like(proj[s]))
        if stat is not None:
            assert torch.equal(stat[s], torch.zeros_like(stat[s]))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, interpreter
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("gram", ("left", "right", "frobenius"))
def test_non_finite_stays_in_its_sample(bad, gram):
    a, b, cu, dirs = make_inputs([30, 25], 5, 19, 2, torch.float32, seed=5)
    a[3, 2] = bad  # a row of sample 0
    proj, stat = triton_stats(a, b, cu, dirs, gram)
    assert not torch.isfinite(proj[0]).all() and not torch.isfinite(stat[0]).all()
    ref_proj, ref_stat = factor_grad_stats_reference(a, b, cu, dirs, gram)
    assert_relative_close("proj[1]", proj[1], ref_proj[1], tolerance(torch.float32))
    assert_relative_close("gram[1]", stat[1], ref_stat[1], tolerance(torch.float32))


def test_deterministic():
    a, b, cu, dirs = make_inputs([70, 41, 5], 19, 150, 3, torch.bfloat16, seed=6)
    first = triton_stats(a, b, cu, dirs, "left")
    second = triton_stats(a, b, cu, dirs, "left")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_public_api_and_registered_op():
    import sqsd_fast

    a, b, cu, dirs = make_inputs([12, 30], 5, 19, 2, torch.float32, seed=7)
    # The package top level re-exports the same op.
    assert sqsd_fast.factor_grad_stats is factor_grad_stats
    proj, stat = sqsd_fast.factor_grad_stats(a, b, cu, dirs, "right", backend="triton")
    ref_proj, ref_stat = factor_grad_stats_reference(a, b, cu, dirs, "right")
    assert_relative_close("proj", proj, ref_proj, tolerance(torch.float32))
    assert_relative_close("gram right", stat, ref_stat, tolerance(torch.float32))
    op_proj, op_stat = torch.ops.sqsd_fast.factor_grad_stats_triton(a, b, cu, dirs, "right")
    assert torch.equal(op_proj, proj) and torch.equal(op_stat, stat)


def test_unavailable_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not backend_available("triton", "cpu")
    assert "TRITON_INTERPRET=1" in backend_unavailable_reason("triton", "cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        triton_stats(torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0, 3]), None, "left")


@requires_cuda
@pytest.mark.parametrize("gram", GRAMS)
def test_opcheck_cuda(gram):
    a, b, cu, dirs = make_inputs([70, 0, 25], 16, 40, 2, torch.bfloat16, seed=8)
    torch.library.opcheck(torch.ops.sqsd_fast.factor_grad_stats_triton.default, (a, b, cu, dirs, gram))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_lora_sized_cuda(dtype):
    # lora_A of a 4096-wide layer at rank 16: a = U (N, 16), b = X (N, 4096), K = 2.
    lengths = [1024, 517, 0, 2048, 300, 811, 1, 999]
    a, b, cu, dirs = make_inputs(lengths, 16, 4096, 2, dtype, seed=9, strided=False)
    check_against_reference(a, b, cu, dirs, "left", tolerance(dtype))
    a, b, cu, dirs = make_inputs(lengths, 4096, 16, 2, dtype, seed=10, strided=False)  # lora_B
    check_against_reference(a, b, cu, dirs, "right", tolerance(dtype))


@requires_cuda
def test_torch_compile_sees_the_op():
    a, b, cu, dirs = make_inputs([70, 25], 16, 64, 2, torch.bfloat16, seed=11)
    compiled = torch.compile(lambda *args: torch.ops.sqsd_fast.factor_grad_stats_triton(*args), fullgraph=True)
    proj, stat = compiled(a, b, cu, dirs, "left")
    eager_proj, eager_stat = triton_stats(a, b, cu, dirs, "left")
    torch.testing.assert_close(proj, eager_proj)
    torch.testing.assert_close(stat, eager_stat)


# ---- tile boundaries: whatever tiles the launcher picks, the numbers match the reference ----
# Gram sides on both sides of each power-of-two tile width (16, 32, 64) and of MAX_GRAM_SIDE
# (the widest side one tile holds; one more takes the Gram-form fallback); long sides across
# the 64-wide tiles.
@pytest.mark.parametrize("side", [16, 17, 33, 64, 65, MAX_GRAM_SIDE, MAX_GRAM_SIDE + 1])
@pytest.mark.parametrize("gram", ["left", "right"])
def test_gram_sides_across_tile_widths_and_the_wide_gram_limit(gram, side):
    p, q = (side, 67) if gram == "left" else (67, side)
    a, b, cu, dirs = make_inputs([70, 0, 9], p, q, 2, torch.float32, seed=side + len(gram))
    check_against_reference(a, b, cu, dirs, gram, tolerance(torch.float32))


@pytest.mark.parametrize("gram", GRAMS)
def test_few_long_samples(gram):
    # Two samples of many rows (several BLOCK_T steps): on a GPU the launcher narrows the long
    # tile to keep enough programs in flight; the result must not depend on that.
    a, b, cu, dirs = make_inputs([700, 321], 16, 300, 2, torch.bfloat16, seed=12)
    check_against_reference(a, b, cu, dirs, gram, tolerance(torch.bfloat16))


@pytest.mark.parametrize("gram", GRAMS)
def test_many_short_samples(gram):
    # Many samples of 0 to 5 rows (each far below one BLOCK_T step), some empty.
    lengths = [(7 * s) % 6 for s in range(60)]
    a, b, cu, dirs = make_inputs(lengths, 19, 24, 3, torch.float32, seed=13)
    proj, stat = check_against_reference(a, b, cu, dirs, gram, tolerance(torch.float32))
    for s in (s for s, n in enumerate(lengths) if n == 0):
        assert torch.equal(proj[s], torch.zeros_like(proj[s]))
        if stat is not None:
            assert torch.equal(stat[s], torch.zeros_like(stat[s]))
