"""The compiled op torch.ops.sqsd_fast.factor_grad_stats (CPU, and CUDA when present)
against the float64 reference (docs/METHOD.md §4).

Skipped where sqsd_fast._C is not built, except under SQSD_FAST_REQUIRE_EXTENSION=1 (set by
`make test`), where every test here fails instead (sqsd_fast.testing.assertions)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from sqsd_fast.ops import backend_available, build_info, factor_grad_stats
from sqsd_fast.ops.constants import MAX_GRAM_SIDE
from sqsd_fast.ops.reference import factor_grad_stats_reference
from sqsd_fast.testing.assertions import (
    RELATIVE_TOLERANCE,
    assert_relative_close,
    non_contiguous,
    random_cu_seqlens,
    require_backend,
)


@pytest.fixture(autouse=True, scope="module")
def _compiled_extension():
    require_backend("cpp", "cpu")  # skips, or fails under SQSD_FAST_REQUIRE_EXTENSION=1


CUDA_READY = torch.cuda.is_available() and backend_available("cpp", "cuda")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not CUDA_READY, reason="needs a CUDA device and sqsd_fast._C built with CUDA")])]
GRAMS = ("left", "right", "frobenius", "none")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# (S, p, q, K): odd sizes, rank-1 factors, a 300-row p that needs several CPU tiles (and the
# CUDA Gram-form fallback for "left"), p = MAX_GRAM_SIDE (the widest in-kernel "left" Gram on
# CUDA) and q = MAX_GRAM_SIDE + 1 (the narrowest "right" fallback), and one LoRA shape
# (r = 16, d = 4096).
SHAPES = [(1, 1, 1, 1), (3, 5, 123, 4), (17, 123, 5, 0), (17, 123, 123, 1), (3, 300, 123, 4),
          (2, MAX_GRAM_SIDE, 40, 1), (2, 40, MAX_GRAM_SIDE + 1, 1), (3, 16, 4096, 2)]


def _tolerance(dtype, device):
    # docs/METHOD.md §4: fp32 1e-5 on CPU, 1e-4 on GPU (tf32 off); bf16 / fp16 1e-2.
    return 1e-4 if (dtype == torch.float32 and device == "cuda") else RELATIVE_TOLERANCE[dtype]


def _lengths(num_samples, generator):
    """Unequal lengths in 0..300 with some empty samples (every fourth, and short ones too)."""
    lengths = torch.randint(0, 301, (num_samples,), generator=generator)
    if num_samples > 1:
        lengths[::4] = 0
        lengths[1] = 5  # short enough for the CPU's Gram form of ||G||^2 when p, q are large
    return lengths.tolist()


def _inputs(S, p, q, K, dtype, device, seed, dirs_dtype=torch.float64):
    """Random (never zero) a, b and dirs in non-contiguous layouts, and their cu_seqlens."""
    generator = torch.Generator().manual_seed(seed)
    cu = random_cu_seqlens(_lengths(S, generator))
    N = int(cu[-1])
    # Views are taken on the device itself: .to(device) would make a gappy view contiguous.
    a = torch.randn(p, N, generator=generator).to(device=device, dtype=dtype).T  # transposed
    b = non_contiguous(torch.randn(N, q, generator=generator).to(device=device, dtype=dtype))
    dirs = None
    if K:
        dirs = torch.randn(K, q, p, generator=generator, dtype=dirs_dtype).to(device).transpose(1, 2)
    return a, b, cu.to(device), dirs


def _run(a, b, cu, dirs, gram):
    return factor_grad_stats(a, b, cu, dirs, gram, backend="cpp")


# Every shape x gram x dtype, except that the wide LoRA shape (q = 4096, slow on the
# reference) runs once per gram it uses in scoring ("left", "frobenius"), in float32.
REFERENCE_CASES = [
    pytest.param(shape, gram, dtype, id="S%d-p%d-q%d-K%d-%s-%s" % (*shape, gram, str(dtype)[6:]))
    for shape in SHAPES for gram in GRAMS for dtype in DTYPES
    if shape[2] != 4096 or (dtype == torch.float32 and gram in ("left", "frobenius"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, gram, dtype", REFERENCE_CASES)
def test_matches_float64_reference(shape, gram, dtype, device):
    S, p, q, K = shape
    dirs_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float64
    a, b, cu, dirs = _inputs(S, p, q, K, dtype, device, seed=sum(shape), dirs_dtype=dirs_dtype)
    proj, stat = _run(a, b, cu, dirs, gram)
    ref_proj, ref_stat = factor_grad_stats_reference(a.cpu(), b.cpu(), cu.cpu(),
                                                     None if dirs is None else dirs.cpu(), gram)
    tol = _tolerance(dtype, device)
    assert proj.dtype == torch.float32 and proj.device.type == device
    assert_relative_close("proj", proj, ref_proj, tol)
    if gram == "none":
        assert stat is None
    else:
        assert stat.dtype == torch.float32
        assert_relative_close(f"gram {gram}", stat, ref_stat, tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gram", GRAMS)
def test_empty_samples_give_exact_zeros(gram, device):
    a, b, _, dirs = _inputs(3, 7, 11, 2, torch.float32, device, seed=1)
    cu = random_cu_seqlens([0, a.shape[0], 0]).to(device)
    proj, stat = _run(a, b, cu, dirs, gram)
    assert proj[1].abs().sum() > 0
    for empty in (0, 2):
        assert torch.equal(proj[empty], torch.zeros_like(proj[empty]))
        if stat is not None:
            assert torch.equal(stat[empty], torch.zeros_like(stat[empty]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gram", GRAMS)
@pytest.mark.parametrize("p,q", [(6, 9), (150, 150)], ids=["small", "large"])
def test_nan_and_inf_propagate(p, q, gram, device):
    """A NaN or inf in a sample's rows shows up in its outputs exactly where the reference has it."""
    generator = torch.Generator().manual_seed(2)
    cu = random_cu_seqlens([4, 7, 6])
    a = torch.randn(17, p, generator=generator)
    b = torch.randn(17, q, generator=generator)
    a[6, 2] = float("nan")  # sample 1
    b[12, 3] = float("inf")  # sample 2
    # Without directions, "frobenius" of long rows takes the CPU's Gram form; cover it too.
    dirs = None if (gram == "frobenius" and p > 100) else torch.randn(2, p, q, generator=generator)
    proj, stat = _run(a.to(device), b.to(device), cu.to(device),
                      None if dirs is None else dirs.to(device), gram)
    ref_proj, ref_stat = factor_grad_stats_reference(a, b, cu, dirs, gram)
    outputs = [(proj, ref_proj)] + ([] if stat is None else [(stat, ref_stat)])
    for out, ref in outputs:
        if out.numel() == 0:
            continue
        finite = torch.isfinite(out).cpu()
        assert torch.equal(finite, torch.isfinite(ref)), f"non-finite at {(~finite).nonzero().tolist()}"
        assert finite[0].all() and not finite[1].all() and not finite[2].all()


def _same_across_thread_counts(gram, device) -> bool:
    a, b, cu, dirs = _inputs(3, 16, 4096, 2, torch.bfloat16, device, seed=3)
    first = _run(a, b, cu, dirs, gram)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        second = _run(a, b, cu, dirs, gram)
    finally:
        torch.set_num_threads(threads)
    return all((x is None and y is None) or torch.equal(x, y) for x, y in zip(first, second))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gram", GRAMS)
def test_deterministic_across_calls_and_thread_counts(gram, device):
    """In a fresh process: on this machine's CPU, once a model has run in the same process
    (e.g. the scoring tests before this one), the "left" form's tile GEMM gives different
    last bits with 2 threads than with 1 (seen 2026-12-06, also on the code before that
    session); the kernel's own decomposition is what this test checks, so it runs apart.
    The in-process effect is recorded as its own problem (the session note)."""
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, %r); import test_cpp_backend as t; "
            "sys.exit(0 if t._same_across_thread_counts(%r, %r) else 1)") % (str(Path(__file__).parent), gram, device)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:] or "results differ across thread counts"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gram", GRAMS)
def test_opcheck(gram, device):
    with_dirs = gram in ("left", "frobenius")
    a, b, cu, dirs = _inputs(3, 5, 12, 2 if with_dirs else 0, torch.float32, device, seed=4)
    torch.library.opcheck(torch.ops.sqsd_fast.factor_grad_stats.default, (a, b, cu, dirs, gram))


def test_inputs_that_require_grad_are_accepted():
    """The op itself (outside the public op's no_grad) detaches what it reads."""
    a, b, cu, dirs = _inputs(3, 5, 12, 1, torch.float32, "cpu", seed=5)
    proj, stat = torch.ops.sqsd_fast.factor_grad_stats(a.detach().requires_grad_(), b.detach().requires_grad_(),
                                                       cu, dirs, "left")
    ref_proj, ref_stat = factor_grad_stats_reference(a, b, cu, dirs, "left")
    assert_relative_close("proj", proj, ref_proj, 1e-5)
    assert_relative_close("gram left", stat, ref_stat, 1e-5)


@pytest.mark.parametrize("bad, message", [
    (dict(gram="diag"), "gram must be one of"),
    (dict(b=torch.randn(9, 4, dtype=torch.float64)), "b must have a's dtype"),
    (dict(cu=torch.tensor([0, 5, 3, 9])), "non-decreasing"),
    (dict(cu=torch.tensor([0, 4, 8])), "end at N=9"),
    (dict(dirs=torch.randn(2, 4, 3)), "dirs must be"),
])
def test_op_rejects_bad_input_itself(bad, message):
    """The C++ checks are the second line of defence behind sqsd_fast/ops/validation.py."""
    args = dict(a=torch.randn(9, 3), b=torch.randn(9, 4), cu=torch.tensor([0, 4, 9]), dirs=None,
                gram="left")
    args.update(bad)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.sqsd_fast.factor_grad_stats(args["a"], args["b"], args["cu"], args["dirs"],
                                              args["gram"])


@pytest.mark.parametrize("bad, message", [
    (dict(a=torch.randn(9, 3, 1)), r"a must be 2-D \(N, p\)"),
    (dict(b=torch.randn(9)), r"b must be 2-D \(N, q\)"),
    (dict(b=torch.randn(8, 4)), "same number of rows N"),
    (dict(b=torch.randn(9, 4).half()), "b must have a's dtype"),
    (dict(cu=torch.tensor([[0, 9]])), r"cu_seqlens must be 1-D \(S \+ 1,\)"),
    (dict(dirs=torch.randn(2, 4, 3)), r"dirs must be \(K >= 1, p=3, q=4\)"),
    (dict(dirs=torch.randn(2, 3)), r"dirs must be \(K >= 1, p=3, q=4\)"),
    (dict(gram="diag"), "gram must be one of 'left', 'right', 'frobenius', 'none'"),
])
def test_fake_kernel_rejects_bad_input(bad, message):
    """The fake kernel (what torch.compile and opcheck trace) checks shapes like the C++ op."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = dict(a=torch.randn(9, 3), b=torch.randn(9, 4), cu=torch.tensor([0, 4, 9]), dirs=None,
                gram="left")
    args.update(bad)
    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
        with pytest.raises(RuntimeError, match=message):
            torch.ops.sqsd_fast.factor_grad_stats(fake["a"], fake["b"], fake["cu"], fake["dirs"], fake["gram"])


@pytest.mark.parametrize("gram, shape", [("left", (3, 5, 5)), ("right", (3, 7, 7)), ("frobenius", (3,)),
                                         ("none", (3, 0))])
def test_fake_kernel_gives_the_output_shapes(gram, shape):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a, b, cu, dirs = torch.empty(11, 5), torch.empty(11, 7), torch.zeros(4, dtype=torch.int64), torch.empty(2, 5, 7)
        proj, stat = torch.ops.sqsd_fast.factor_grad_stats(a, b, cu, dirs, gram)
    assert proj.shape == (3, 2) and proj.dtype == torch.float32
    assert stat.shape == shape and stat.dtype == torch.float32


@pytest.fixture(scope="module")
def tile_kernel_on_cpu(tmp_path_factory):
    """csrc/cuda/emulate_tile_kernel.cpp built with the host compiler: the CUDA tile kernel's
    logic, runnable without a GPU."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the CPU emulation of the CUDA kernel")
    source = Path(__file__).resolve().parents[1] / "csrc" / "cuda" / "emulate_tile_kernel.cpp"
    binary = tmp_path_factory.mktemp("emulate") / "emulate_tile_kernel"
    torch_include = Path(torch.__file__).parent / "include"
    subprocess.run([compiler, "-std=c++20", "-O1", "-pthread", f"-I{torch_include}", str(source),
                    "-o", str(binary)], check=True, capture_output=True)
    return binary


def _emulated_cases():
    """(p, q, K, gram, TM, TN, dtype) for every tile shape of the kernel, as build_info()
    reports them from csrc/cuda/factor_grad_tile_params.h: each tile with the Gram it can
    compute in-kernel (side <= max_gram_side; the side fills the tile, the other dimension
    spans several tiles), and the default tile with "frobenius" and "none".
    gram 0 none, 1 left, 2 right, 3 frobenius; dtype 0 fp32, 1 bf16, 2 fp16."""
    info = build_info()
    if not info["built"]:  # the autouse fixture skips (or fails) it; keep one case to report
        return [pytest.param(None, id="extension-missing")]
    limit, cases = info["max_gram_side"], []
    for i, (tm, tn) in enumerate(info["cuda_tile_shapes"]):
        if tm <= limit:
            cases.append((tm - i, 2 * tn + 44, 1 + i % 3, 1, tm, tn, i % 3))
        if tn <= limit:
            cases.append((tm + 37, tn - i, 1 + (i + 1) % 3, 2, tm, tn, (i + 1) % 3))
    dm, dn = info["cuda_default_tile"]
    return cases + [(dm + 6, dn + 66, 2, 3, dm, dn, 1), (1, 1, 1, 0, dm, dn, 0)]


@pytest.mark.parametrize("case", _emulated_cases(), ids=lambda c: "p%d-q%d-K%d-gram%d-%dx%d-dt%d" % c)
def test_cuda_tile_kernel_logic_on_cpu(tile_kernel_on_cpu, case):
    out = subprocess.run([str(tile_kernel_on_cpu), *map(str, case)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    fields = dict(item.split("=") for item in out.split())
    assert float(fields["rel_err"]) <= 1e-5, out
    assert fields["empty_zero"] == "1", out


def test_build_info_describes_the_build():
    info = build_info()
    assert info["built"] is True and info["version"] == "0.1.0"
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(info["cuda_compiled"], bool) and info["num_threads"] >= 1
    assert (info["cuda_version"] is None) == (not info["cuda_compiled"])


def test_build_info_reports_one_gram_limit_and_the_tile_list():
    """The CUDA kernel's Gram limit is the Python one (the Triton backend's), and its tile
    list has a tile that spans the limit both ways and holds the default tile."""
    info = build_info()
    assert info["max_gram_side"] == MAX_GRAM_SIDE
    shapes = [tuple(shape) for shape in info["cuda_tile_shapes"]]
    assert len(set(shapes)) == len(shapes) and tuple(info["cuda_default_tile"]) in shapes
    assert any(tm == MAX_GRAM_SIDE for tm, _ in shapes) and any(tn == MAX_GRAM_SIDE for _, tn in shapes)
    assert all(tm % 16 == 0 and tn % 16 == 0 for tm, tn in shapes)


# bf16 inputs on the CPU take one of two tile paths (csrc/cpu: use_bf16_gemm): a bf16 GEMM
# where the CPU has native bf16 dot products, else slices widened to fp32. The environment
# variable forces either, so both are checked on any machine against the float64 reference.
BF16_LORA_SHAPES = [(5, 8, 576, 2, "left"), (5, 576, 8, 2, "right"), (3, 300, 123, 4, "frobenius"),
                    (4, 16, 1536, 1, "none")]


@pytest.mark.parametrize("tile_path", ["bf16_gemm", "widen_to_fp32"])
@pytest.mark.parametrize("shape_gram", BF16_LORA_SHAPES, ids=lambda s: "S%d-p%d-q%d-K%d-%s" % s)
def test_cpu_bf16_tile_paths_match_reference(shape_gram, tile_path, monkeypatch):
    S, p, q, K, gram = shape_gram
    monkeypatch.setenv("SQSD_FAST_CPU_BF16_GEMM", "1" if tile_path == "bf16_gemm" else "0")
    a, b, cu, dirs = _inputs(S, p, q, K, torch.bfloat16, "cpu", seed=p + q, dirs_dtype=torch.bfloat16)
    proj, stat = _run(a, b, cu, dirs, gram)
    ref_proj, ref_stat = factor_grad_stats_reference(a, b, cu, dirs, gram)
    # The widened path is exact up to fp32 sums; the GEMM path rounds each G entry to bf16
    # once (<= 2^-9 relative), which the statistics average: well inside the contract's 1e-2.
    tol = 1e-5 if tile_path == "widen_to_fp32" else 5e-3
    assert_relative_close("proj", proj, ref_proj, tol)
    if gram != "none":
        assert_relative_close(f"gram {gram}", stat, ref_stat, tol)
