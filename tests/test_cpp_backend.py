"""The compiled op torch.ops.sqsd_fast.factor_grad_stats (CPU, and CUDA when present)
against the float64 reference (sqsd.md §4)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from _helpers import RELATIVE_TOLERANCE, assert_relative_close, non_contiguous, random_cu_seqlens

from sqsd_fast.backends import cpp
from sqsd_fast.reference import factor_grad_stats_reference

pytestmark = pytest.mark.skipif(not cpp.is_available(torch.device("cpu")),
                                reason=cpp.unavailable_reason(torch.device("cpu")))

CUDA_READY = torch.cuda.is_available() and cpp.is_available(torch.device("cuda"))
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not CUDA_READY, reason="needs a CUDA device and sqsd_fast._C built with CUDA")])]
GRAMS = ("left", "right", "frobenius", "none")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# (S, p, q, K): odd sizes, rank-1 factors, a 300-row p that needs several CPU tiles (and the
# CUDA Gram-form fallback for "left"), and one LoRA shape (r = 16, d = 4096).
SHAPES = [(1, 1, 1, 1), (3, 5, 123, 4), (17, 123, 5, 0), (17, 123, 123, 1), (3, 300, 123, 4),
          (3, 16, 4096, 2)]


def _tolerance(dtype, device):
    # sqsd.md §4: fp32 1e-5 on CPU, 1e-4 on GPU (tf32 off); bf16 / fp16 1e-2.
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
    return cpp.factor_grad_stats(a, b, cu, dirs, gram)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gram", GRAMS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "S%d-p%d-q%d-K%d" % s)
def test_matches_float64_reference(shape, gram, dtype, device):
    S, p, q, K = shape
    if q == 4096 and (dtype != torch.float32 or gram in ("right", "none")):
        pytest.skip("one LoRA case per gram that it uses is enough")
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gram", GRAMS)
def test_deterministic_across_calls_and_thread_counts(gram, device):
    a, b, cu, dirs = _inputs(3, 16, 4096, 2, torch.bfloat16, device, seed=3)
    first = _run(a, b, cu, dirs, gram)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        second = _run(a, b, cu, dirs, gram)
    finally:
        torch.set_num_threads(threads)
    for x, y in zip(first, second):
        assert (x is None and y is None) or torch.equal(x, y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gram", GRAMS)
def test_opcheck(gram, device):
    with_dirs = gram in ("left", "frobenius")
    a, b, cu, dirs = _inputs(3, 5, 12, 2 if with_dirs else 0, torch.float32, device, seed=4)
    torch.library.opcheck(torch.ops.sqsd_fast.factor_grad_stats.default, (a, b, cu, dirs, gram))


def test_inputs_that_require_grad_are_accepted():
    a, b, cu, dirs = _inputs(3, 5, 12, 1, torch.float32, "cpu", seed=5)
    proj, stat = _run(a.detach().requires_grad_(), b.detach().requires_grad_(), cu, dirs, "left")
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
    """The C++ checks are the second line of defence behind validation.py."""
    args = dict(a=torch.randn(9, 3), b=torch.randn(9, 4), cu=torch.tensor([0, 4, 9]), dirs=None,
                gram="left")
    args.update(bad)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.sqsd_fast.factor_grad_stats(args["a"], args["b"], args["cu"], args["dirs"],
                                              args["gram"])


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


# (p, q, K, gram, TM, TN, dtype): every tile shape the launcher picks, with the gram it
# computes in-kernel; gram 0 none, 1 left, 2 right, 3 frobenius; dtype 0 fp32, 1 bf16, 2 fp16.
EMULATED_CASES = [(16, 300, 2, 1, 16, 256, 0), (16, 1000, 1, 1, 16, 256, 1), (30, 40, 4, 1, 32, 128, 2),
                  (60, 70, 1, 1, 64, 64, 0), (100, 50, 3, 1, 128, 32, 0), (123, 5, 1, 2, 256, 16, 2),
                  (60, 20, 1, 2, 128, 32, 1), (50, 100, 2, 2, 32, 128, 0), (70, 130, 2, 3, 64, 64, 1),
                  (1, 1, 1, 0, 64, 64, 0)]


@pytest.mark.parametrize("case", EMULATED_CASES, ids=lambda c: "p%d-q%d-K%d-gram%d-%dx%d-dt%d" % c)
def test_cuda_tile_kernel_logic_on_cpu(tile_kernel_on_cpu, case):
    out = subprocess.run([str(tile_kernel_on_cpu), *map(str, case)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    fields = dict(item.split("=") for item in out.split())
    assert float(fields["rel_err"]) <= 1e-5, out
    assert fields["empty_zero"] == "1", out


def test_build_info_describes_the_build():
    info = cpp.build_info()
    assert info["built"] is True and info["version"] == "0.1.0"
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(info["cuda_compiled"], bool) and info["num_threads"] >= 1
    assert (info["cuda_version"] is None) == (not info["cuda_compiled"])
