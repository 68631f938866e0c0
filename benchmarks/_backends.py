"""How the benchmarks reach ``factor_grad_stats`` backends.

Through the public op ``sqsd_fast.api.factor_grad_stats(..., backend=name)`` (so input
validation is part of what is timed, as users pay it); if the public module is missing,
straight through the backend module (docs/CONTRACTS.md "Backend module interface").
"""

from __future__ import annotations

import importlib

import torch

BACKEND_MODULES = {
    "reference": "sqsd_fast.backends.reference_backend",
    "cpp": "sqsd_fast.backends.cpp",
    "triton": "sqsd_fast.backends.triton_backend",
}


def backend_status(name: str, device: torch.device) -> tuple[bool, str]:
    """(available, reason when not)."""
    try:
        module = importlib.import_module(BACKEND_MODULES[name])
    except Exception as exc:  # missing module or failed native load
        return False, f"{BACKEND_MODULES[name]} does not import ({type(exc).__name__}: {exc})"
    try:
        if module.is_available(device):
            return True, ""
        return False, module.unavailable_reason(device) or "is_available() is False"
    except Exception as exc:
        return False, f"is_available raised {type(exc).__name__}: {exc}"


def factor_grad_stats_fn(name: str):
    """A callable ``f(a, b, cu_seqlens, dirs, gram) -> (proj, stat)`` for backend ``name``."""
    try:
        api = importlib.import_module("sqsd_fast.api")
        public = api.factor_grad_stats

        def call(a, b, cu_seqlens, dirs, gram):
            return public(a, b, cu_seqlens, dirs=dirs, gram=gram, backend=name)

        call.via = "sqsd_fast.api"
        return call
    except (ImportError, AttributeError):
        module = importlib.import_module(BACKEND_MODULES[name])

        def call(a, b, cu_seqlens, dirs, gram):
            return module.factor_grad_stats(a, b, cu_seqlens, dirs, gram)

        call.via = BACKEND_MODULES[name]
        return call
