"""Assertions and input builders shared by the tests.

Also the rule for tests that need the compiled extension: they skip where it is not built,
unless ``SQSD_FAST_REQUIRE_EXTENSION=1`` (``make test`` sets it), where they fail instead,
so a broken build cannot pass as a run with skips.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

from sqsd_fast.ops import backend_available, backend_unavailable_reason, build_info

# Set to anything but "" or "0": tests that need sqsd_fast._C fail, not skip, without it.
REQUIRE_EXTENSION_ENV = "SQSD_FAST_REQUIRE_EXTENSION"

# docs/METHOD.md §4: ||out - ref|| / ||ref|| against a float64 reference.
RELATIVE_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float64: 1e-12}


def assert_relative_close(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """Fails with where and how badly ``out`` differs from the float64 ``ref``."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out64).all(), (
        f"{name}: non-finite values at {torch.nonzero(~torch.isfinite(out64))[:5].tolist()}")
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


def extension_required() -> bool:
    """Whether ``SQSD_FAST_REQUIRE_EXTENSION`` asks for the compiled extension to be there."""
    return os.environ.get(REQUIRE_EXTENSION_ENV, "") not in ("", "0")


def _missing_backend(name: str, device: str | torch.device) -> tuple[str, bool]:
    """("", False) when ``backend=name`` runs on ``device``; else (why not, whether that fails).

    Under :func:`extension_required` a missing compiled extension fails, and so does a Triton
    backend that cannot run on the CPU (the interpreter: ``make test`` installs triton, so
    its tests must run there); a missing GPU or a build without CUDA stay skips.
    """

    if backend_available(name, device):
        return "", False
    reason = backend_unavailable_reason(name, device)
    missing_cpp = name == "cpp" and not build_info()["built"]
    missing_interpreter = name == "triton" and torch.device(device).type == "cpu"
    fails = extension_required() and (missing_cpp or missing_interpreter)
    if fails:
        what = "the compiled extension is missing" if missing_cpp else "Triton cannot run on the CPU"
        reason = (f"{REQUIRE_EXTENSION_ENV}=1 (set by `make test`) but {what}, so this test fails "
                  f"instead of skipping: {reason}")
    return reason, fails


def missing_backend(name: str, device: str | torch.device = "cpu") -> tuple[str, bool]:
    """(why ``backend=name`` cannot run on ``device`` or "", whether that must fail)."""
    return _missing_backend(name, device)


def require_module(name: str):
    """``pytest.importorskip(name)``, except under :func:`extension_required` (``make test``,
    which installs every dependency), where a missing module fails the test instead."""

    import pytest

    if not extension_required():
        return pytest.importorskip(name)
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(f"{REQUIRE_EXTENSION_ENV}=1 (set by `make test`) but {name} cannot be imported "
                    f"({exc}); `make deps` installs it", pytrace=False)


def require_backend(name: str, device: str | torch.device = "cpu") -> None:
    """Inside a test or fixture: skip unless ``backend=name`` runs on ``device``; fail instead
    when the compiled extension is missing and :func:`extension_required`."""
    import pytest

    reason, fails = _missing_backend(name, device)
    if fails:
        pytest.fail(reason, pytrace=False)
    if reason:
        pytest.skip(reason)


def requires_backend(name: str, device: str | torch.device = "cpu"):
    """Decorator form of :func:`require_backend`, decided when the test module is imported."""
    import pytest

    reason, fails = _missing_backend(name, device)

    def decorate(test):
        if not reason:
            return test
        if not fails:
            return pytest.mark.skip(reason=reason)(test)

        @functools.wraps(test)  # keeps the test's signature (fixtures) and its marks
        def fail_instead(*args, **kwargs):
            pytest.fail(reason, pytrace=False)

        return fail_instead

    return decorate
