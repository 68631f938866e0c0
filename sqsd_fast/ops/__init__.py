"""The kernel layer: per-sample factor-gradient statistics and their LoRA composition
(docs/METHOD.md §3, §4), behind one public op per statistic.

    from sqsd_fast.ops import factor_grad_stats
    proj, gram = factor_grad_stats(a, b, cu_seqlens, dirs, gram="left", backend="auto")

Layout: :mod:`~sqsd_fast.ops.api` (the public ops and backend choice),
:mod:`~sqsd_fast.ops.validation` (input checks, once per call),
:mod:`~sqsd_fast.ops.constants` (backend names, gram modes, dtypes, the wide-Gram limit),
:mod:`~sqsd_fast.ops.reference` (the float64 oracle) and :mod:`~sqsd_fast.ops.backends`
(``reference``, ``cpp`` = the compiled ``sqsd_fast._C``, ``triton``). Importing this package
never needs the compiled extension; without it the reference backend still works.
"""

from sqsd_fast.ops.api import (
    backend_available,
    backend_unavailable_reason,
    build_info,
    direction_sqnorm,
    factor_grad_stats,
    lora_update_stats,
    lora_update_stats_projected,
    project_directions,
    resolve_backend,
)

__all__ = [
    "backend_available",
    "backend_unavailable_reason",
    "build_info",
    "direction_sqnorm",
    "factor_grad_stats",
    "lora_update_stats",
    "lora_update_stats_projected",
    "project_directions",
    "resolve_backend",
]
