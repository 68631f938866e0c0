"""engine/status.py: the one rule that gives every sample of a batch its status, for both faces."""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from sqsd_fast.engine.status import (NO_RESPONSE_TOKENS, NON_FINITE_GRADIENT, OK, ZERO_GRADIENT, ZERO_UPDATE,
                                     batch_statuses)


def test_each_sample_gets_the_first_status_that_applies():
    # samples: 0 not run; 1 non-finite loss; 2 NaN in a checked value AND a zero row (non-finite
    # wins); 3 zero row; 4 inf in the last checked tensor; 5 ok; 6 zero row; 7 tiny but
    # nonzero (1e-300) is ok: only an exact zero is refused.
    out = SimpleNamespace(ran=[False, True, True, True, True, True, True, True],
                          finite_loss=[False, False, True, True, True, True, True, True])
    norms = torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0], [0.0, 0.0], [3.0, 1.0], [0.5, 0.25],
                          [0.0, 0.0], [0.0, 1e-300]], dtype=torch.float64)
    dots = torch.ones(8, 2, 3, dtype=torch.float64)
    dots[2, 1, 0] = math.nan
    sketch = torch.ones(8, 5, dtype=torch.float64)
    sketch[4, 3] = math.inf
    got = batch_statuses(out, [norms, dots, sketch], zero=ZERO_UPDATE, zero_when=norms)
    assert got == [NO_RESPONSE_TOKENS, NON_FINITE_GRADIENT, NON_FINITE_GRADIENT, ZERO_UPDATE,
                   NON_FINITE_GRADIENT, OK, ZERO_UPDATE, OK]


def test_the_zero_status_and_what_decides_it_are_the_faces_choice():
    out = SimpleNamespace(ran=[True, True], finite_loss=[True, True])
    grad_sq = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    update_sq = torch.tensor([[0.0], [0.0]], dtype=torch.float64)
    assert batch_statuses(out, [grad_sq, update_sq], zero=ZERO_GRADIENT, zero_when=grad_sq) == [ZERO_GRADIENT, OK]
    assert batch_statuses(out, [update_sq], zero=ZERO_UPDATE, zero_when=update_sq) == [ZERO_UPDATE, ZERO_UPDATE]


def test_safe_ratio_divides_and_gives_zero_only_where_the_denominator_is_zero():
    """The one zero guard of every cosine: a module with a zero update has no angle and adds
    0 (not NaN) to the sum; everywhere else it is the plain quotient, on any shape."""
    from sqsd_fast.engine.status import safe_ratio
    generator = torch.Generator().manual_seed(5)
    num = torch.randn(3, 7, 2, generator=generator, dtype=torch.float64)[:, ::2]   # non-contiguous
    den = torch.rand(3, 4, 2, generator=generator, dtype=torch.float64) + 0.1
    den[1, 2, 0] = 0.0
    got = safe_ratio(num, den)
    assert got[1, 2, 0] == 0.0 and torch.isfinite(got).all()
    mask = den > 0
    torch.testing.assert_close(got[mask], num[mask] / den[mask], rtol=0, atol=0)


def test_ran_status_orders_non_finite_before_zero():
    from sqsd_fast.engine.status import NON_FINITE_GRADIENT, OK, ZERO_GRADIENT, ZERO_UPDATE, ran_status
    assert ran_status(False, 0.0) == NON_FINITE_GRADIENT
    assert ran_status(True, 0.0) == ZERO_UPDATE and ran_status(True, 0.0, ZERO_GRADIENT) == ZERO_GRADIENT
    assert ran_status(True, 1e-30) == OK
