"""The one vocabulary of per-sample statuses, shared by every face of the engine.

Every row the engine produces (SQSD scores, projections, gradient statistics, baselines)
carries one of these; a sample whose status is not "ok" gets no number (None / NaN),
never a silently wrong one.
"""
from __future__ import annotations

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


def sample_status(*, finite: bool, zero: str | None = None) -> str:
    """The status of a sample that had response tokens: NON_FINITE_GRADIENT unless
    ``finite``; else ``zero`` (ZERO_GRADIENT or ZERO_UPDATE) when given; else OK."""
    if not finite:
        return NON_FINITE_GRADIENT
    return zero if zero is not None else OK
