"""The kernel layer's constants, each written once (docs/METHOD.md §4).

Backend names, gram modes and input dtypes are what :mod:`sqsd_fast.ops.validation`
accepts; :data:`MAX_GRAM_SIDE` is the widest Gram side a fast kernel computes in one tile.
"""

from __future__ import annotations

import torch

# Backends that compute factor_grad_stats; each is the module sqsd_fast.ops.backends.<name>.
BACKEND_NAMES = ("reference", "cpp", "triton")
# What ``backend=`` accepts: a backend name, or "auto" (the fastest one available).
BACKENDS = ("auto",) + BACKEND_NAMES

# "left" -> (S, p, p) G G^T, "right" -> (S, q, q) G^T G, "frobenius" -> (S,) ||G||_F^2.
GRAM_MODES = ("left", "right", "frobenius", "none")

FAST_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The reference is the float64 oracle, so it also takes float64 inputs.
REFERENCE_INPUT_DTYPES = FAST_INPUT_DTYPES + (torch.float64,)

# Widest Gram side one register tile spans (LoRA ranks are <= 128): a "left" Gram with
# p > MAX_GRAM_SIDE, or a "right" Gram with q > MAX_GRAM_SIDE, takes the Gram-form fallback
# (G G^T = a_s^T (b_s b_s^T) a_s) in the CUDA and Triton backends. The CUDA side defines it
# as kMaxGramSide in csrc/cuda/factor_grad_tile_params.h and reports it in
# sqsd_fast.ops.build_info()["max_gram_side"]; tests/test_cpp_backend.py checks they agree.
MAX_GRAM_SIDE = 128
