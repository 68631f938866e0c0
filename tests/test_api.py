"""The public ops: the float64 reference, the LoRA composition, backend choice, and bad input."""

from __future__ import annotations

import warnings

import pytest
import torch

import sqsd_fast
import sqsd_fast.ops
from sqsd_fast.ops import api
from sqsd_fast.ops.reference import (
    direction_sqnorm_reference,
    factor_grad_stats_reference,
    lora_update_stats_reference,
)
from sqsd_fast.testing.assertions import (
    assert_relative_close,
    extension_required,
    non_contiguous,
    random_cu_seqlens,
)

# Without the compiled extension cpp drops out, unless SQSD_FAST_REQUIRE_EXTENSION=1 (make
# test): then its cases stay and fail with the op's "not available ... build it" error.
FAST_BACKENDS_ON_CPU = ["cpp"] if sqsd_fast.backend_available("cpp", "cpu") or extension_required() else []


def _token_by_token(a, b, cu_seqlens, dirs):
    """G_s built one outer product at a time: an oracle for the oracle."""
    grads = []
    for s in range(len(cu_seqlens) - 1):
        g = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64)
        for t in range(int(cu_seqlens[s]), int(cu_seqlens[s + 1])):
            g += torch.outer(a[t].double(), b[t].double())
        grads.append(g)
    return grads


def test_reference_matches_token_by_token_sums():
    torch.manual_seed(0)
    cu = random_cu_seqlens([3, 0, 7, 1])
    a, b, dirs = torch.randn(11, 5), torch.randn(11, 3), torch.randn(2, 5, 3)
    grads = _token_by_token(a, b, cu, dirs)
    for gram, expect in {
        "left": [g @ g.T for g in grads],
        "right": [g.T @ g for g in grads],
        "frobenius": [g.square().sum() for g in grads],
    }.items():
        proj, stat = factor_grad_stats_reference(a, b, cu, dirs, gram)
        assert_relative_close(f"gram {gram}", stat, torch.stack(expect), 1e-12)
        expected_proj = torch.stack([torch.stack([(g * d.double()).sum() for d in dirs]) for g in grads])
        assert_relative_close("proj", proj, expected_proj, 1e-12)
    proj, stat = factor_grad_stats_reference(a, b, cu, None, "none")
    assert proj.shape == (4, 0) and stat is None


def _lora_case(seed, n_lengths, d_in, d_out, r, r_d, K, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    cu = random_cu_seqlens(n_lengths)
    N = int(cu[-1])
    A = torch.randn(r, d_in, generator=gen) / d_in**0.5
    B = torch.randn(d_out, r, generator=gen) / r**0.5
    x = torch.randn(N, d_in, generator=gen)
    e = torch.randn(N, d_out, generator=gen)
    h, u = x @ A.T, e @ B  # what a LoRA module's hooks capture (docs/METHOD.md §3)
    dir_A = torch.randn(K, r_d, d_in, generator=gen)
    dir_B = torch.randn(K, d_out, r_d, generator=gen)
    return [t.to(dtype) for t in (x, h, u, e)], cu, A, B, dir_A, dir_B


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS_ON_CPU)
@pytest.mark.parametrize(
    "lengths, d_in, d_out, r, r_d, K",
    [([5], 7, 9, 1, 1, 1), ([13, 0, 29], 33, 19, 4, 3, 2), ([40, 3, 17, 1, 0, 25], 65, 123, 8, 5, 3)],
)
def test_lora_update_stats_matches_dense_update(backend, lengths, d_in, d_out, r, r_d, K):
    (x, h, u, e), cu, A, B, dir_A, dir_B = _lora_case(1, lengths, d_in, d_out, r, r_d, K)
    x, e, dir_A = non_contiguous(x), non_contiguous(e), non_contiguous(dir_A)
    dot, sqnorm = sqsd_fast.lora_update_stats(x, h, u, e, cu, A, B, dir_A, dir_B, backend=backend)
    ref_dot, ref_sqnorm = lora_update_stats_reference(x, h, u, e, cu, A, B, dir_A, dir_B)
    assert dot.dtype == sqnorm.dtype == torch.float32
    assert_relative_close("dot", dot, ref_dot, 1e-5)
    assert_relative_close("sqnorm", sqnorm, ref_sqnorm, 1e-5)
    empty = torch.tensor(lengths) == 0
    assert (dot[empty] == 0).all() and (sqnorm[empty] == 0).all()


def test_direction_sqnorm_matches_dense():
    torch.manual_seed(2)
    dir_A, dir_B = torch.randn(3, 4, 37), torch.randn(3, 21, 4)
    assert_relative_close("||D||^2", sqsd_fast.direction_sqnorm(dir_A, dir_B),
                          direction_sqnorm_reference(dir_A, dir_B), 1e-6)


def test_non_finite_inputs_propagate():
    torch.manual_seed(3)
    a, b = torch.randn(6, 3), torch.randn(6, 4)
    a[4, 1] = float("nan")
    proj, stat = sqsd_fast.factor_grad_stats(a, b, random_cu_seqlens([2, 4]), torch.randn(1, 3, 4), "frobenius",
                                             backend="reference")
    assert torch.isfinite(proj[0]).all() and torch.isfinite(stat[0])
    assert torch.isnan(proj[1]).all() and torch.isnan(stat[1])


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(api, "_backend_module",
                        lambda name: (api.importlib.import_module(api._BACKEND_MODULES[name])
                                      if name == "reference" else None))
    api._warn_reference_fallback.cache_clear()
    a, b, cu = torch.randn(4, 2), torch.randn(4, 3), random_cu_seqlens([4])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            sqsd_fast.factor_grad_stats(a, b, cu, gram="frobenius")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "pip install --no-build-isolation -e ." in messages[0]
    with pytest.raises(RuntimeError, match="backend='cpp' is not available"):
        sqsd_fast.factor_grad_stats(a, b, cu, backend="cpp")
    api._warn_reference_fallback.cache_clear()


# ---- bad input: every rule raises a clear error naming the argument, from every backend ----

GOOD = dict(a=torch.randn(5, 3), b=torch.randn(5, 4), cu_seqlens=torch.tensor([0, 2, 5]), dirs=torch.randn(2, 3, 4))
BAD_INPUTS = [
    (dict(a=torch.randn(5)), ValueError, r"a must have shape \(N, p\)"),
    (dict(b=torch.randn(5, 4, 1)), ValueError, r"b must have shape \(N, q\)"),
    (dict(b=torch.randn(6, 4)), ValueError, "same number of rows N"),
    (dict(a=torch.randint(0, 3, (5, 3))), TypeError, "a must have a floating dtype"),
    (dict(b=torch.randn(5, 4).half()), TypeError, "same dtype"),
    (dict(a=[[1.0]]), TypeError, "a must be a torch.Tensor"),
    (dict(cu_seqlens=torch.tensor([1, 2, 5])), ValueError, "must start at 0"),
    (dict(cu_seqlens=torch.tensor([0, 4, 2, 5])), ValueError, "non-decreasing"),
    (dict(cu_seqlens=torch.tensor([0, 2, 4])), ValueError, "must end at N = 5"),
    (dict(cu_seqlens=torch.tensor([0.0, 5.0])), TypeError, "int32 or int64"),
    (dict(cu_seqlens=torch.tensor([[0, 5]])), ValueError, r"shape \(S\+1,\)"),
    (dict(dirs=torch.randn(2, 4, 3)), ValueError, r"dirs must have shape \(K, p, q\) = \(K, 3, 4\)"),
    (dict(dirs=torch.randn(3, 4)), ValueError, r"dirs must have shape \(K, p, q\)"),
    (dict(gram="diag"), ValueError, "gram must be one of"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
    (dict(dirs=torch.randn(2, 3, 4, device="meta")), ValueError, "one device"),
]


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton", "auto"])
@pytest.mark.parametrize("override, error, message", BAD_INPUTS,
                         ids=lambda v: str(v)[:40] if isinstance(v, str) else None)
def test_bad_input_is_refused_before_any_kernel(backend, override, error, message):
    kwargs = {**GOOD, "gram": "left", "backend": backend, **override}
    with pytest.raises(error, match=message):
        sqsd_fast.factor_grad_stats(**kwargs)


def test_fast_backends_refuse_float64_but_reference_takes_it():
    a, b, cu = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64), torch.tensor([0, 3])
    with pytest.raises(TypeError, match="float32, bfloat16, float16"):
        sqsd_fast.factor_grad_stats(a, b, cu, backend="cpp")
    assert sqsd_fast.factor_grad_stats(a, b, cu, gram="frobenius", backend="reference")[1].dtype == torch.float32


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(B=torch.randn(9, 3)), "share the rank r"),
        (dict(dir_A=torch.randn(2, 2, 6)), "same d_out x d_in"),
        (dict(dir_B=torch.randn(3, 9, 2)), "agree on K and r_d"),
        (dict(x=torch.randn(10, 6)), r"x must have shape \(N, d_in\) with d_in = 7"),
        (dict(e=torch.randn(9, 9)), "same number of rows N"),
    ],
)
def test_lora_update_stats_bad_input(override, message):
    (x, h, u, e), cu, A, B, dir_A, dir_B = _lora_case(4, [4, 6], 7, 9, 2, 2, 2)
    kwargs = dict(x=x, h=h, u=u, e=e, cu_seqlens=cu, A=A, B=B, dir_A=dir_A, dir_B=dir_B, backend="reference")
    kwargs.update(override)
    with pytest.raises(ValueError, match=message):
        sqsd_fast.lora_update_stats(**kwargs)


def test_ops_package_and_top_level_export_the_same_ops():
    names = ("backend_available", "build_info", "direction_sqnorm", "factor_grad_stats", "lora_update_stats",
             "lora_update_stats_projected", "project_directions", "resolve_backend")
    for name in names:
        assert getattr(sqsd_fast, name) is getattr(sqsd_fast.ops, name), name
        assert name in sqsd_fast.__all__ and name in sqsd_fast.ops.__all__
    assert sqsd_fast.ops.backend_unavailable_reason("reference", "cpu") == ""
    with pytest.raises(ValueError, match="backend must be one of"):
        sqsd_fast.ops.backend_available("auto")


def test_scorer_is_reachable_from_the_package_top_level():
    from sqsd_fast.scoring.scorer import SQSDScorer

    assert sqsd_fast.SQSDScorer is SQSDScorer
    with pytest.raises(AttributeError, match="no attribute 'not_an_op'"):
        sqsd_fast.not_an_op
