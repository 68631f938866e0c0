"""Implementations of ``factor_grad_stats``: one module per name in
:data:`sqsd_fast.ops.constants.BACKEND_NAMES` (``reference``, ``cpp``, ``triton``).

Each module follows docs/CONTRACTS.md ("Backend module interface"): ``is_available(device)``,
``unavailable_reason(device)`` and ``factor_grad_stats(a, b, cu_seqlens, dirs, gram)`` on
inputs already checked by :mod:`sqsd_fast.ops.validation`. Callers go through the public op
:func:`sqsd_fast.ops.factor_grad_stats`, never through these modules.
"""

# How to get the compiled backend; said by every message that reports it missing.
BUILD_HINT = "build it with `pip install --no-build-isolation -e .` (or `make test`) in the sqsd_fast checkout"
