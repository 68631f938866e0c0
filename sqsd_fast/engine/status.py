"""The one vocabulary of per-sample statuses, and the one rule that gives them, for every face.

Every row the engine produces (SQSD scores, projections, gradient statistics, baselines)
carries one of these; a sample whose status is not "ok" gets no number (None / NaN),
never a silently wrong one.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

OK = "ok"
# No loss position: every label is -100 after the causal shift (e.g. truncated inside the prompt).
NO_RESPONSE_TOKENS = "no_response_tokens"
# The LoRA-parameter gradient is exactly zero in every module: nothing to normalize.
ZERO_GRADIENT = "zero_gradient"
# The induced update dW = -(G_B A + B G_A) is exactly zero in every module, so cosines with
# it are undefined (e.g. a state with A = B = 0). SQSD's statistics see only the update, so
# they report this one; the gradient statistics see both and report ZERO_GRADIENT first.
ZERO_UPDATE = "zero_update"
# The loss or a statistic is NaN or infinite.
NON_FINITE_GRADIENT = "non_finite_gradient"

STATUSES = (OK, NO_RESPONSE_TOKENS, ZERO_GRADIENT, ZERO_UPDATE, NON_FINITE_GRADIENT)


def safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``, and 0 where ``den`` is 0: a module whose update (or gradient, or
    direction) is exactly zero has no angle and contributes 0 to a sum of cosines, not NaN.
    The one rule for every cosine the faces report (SQSD's projections, the gradient
    statistics' cosines, the online scores); a sample with no angle at all gets its status
    from :func:`batch_statuses` instead."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def ran_status(finite: bool, zero_sum: float, zero: str = ZERO_UPDATE) -> str:
    """The status of a sample that ran: NON_FINITE_GRADIENT when its loss or a statistic is
    not finite, ``zero`` when its ``zero_when`` statistic sums to exactly 0, else OK."""
    if not finite:
        return NON_FINITE_GRADIENT
    return zero if zero_sum == 0.0 else OK


def batch_statuses(out, checked: Sequence[torch.Tensor], *, zero: str, zero_when: torch.Tensor) -> list[str]:
    """The status of every sample of one batch, the one rule both faces use.

    ``out``: the batch runner's ``BatchOutput`` (``ran``, ``finite_loss``); ``checked``:
    the face's per-sample statistics (first dimension = the batch's samples). A sample that
    did not run: NO_RESPONSE_TOKENS; whose loss or any checked value is NaN or infinite:
    NON_FINITE_GRADIENT; whose row of ``zero_when`` sums to exactly 0: ``zero``
    (ZERO_UPDATE for SQSD, which sees only the update; ZERO_GRADIENT for the gradient
    statistics); else OK."""
    statuses = []
    for i, ran in enumerate(out.ran):
        if not ran:
            statuses.append(NO_RESPONSE_TOKENS)
        else:
            finite = out.finite_loss[i] and all(bool(torch.isfinite(v[i]).all()) for v in checked)
            statuses.append(ran_status(finite, float(zero_when[i].sum()) if finite else math.nan, zero))
    return statuses
