"""Loading what a face of the engine runs on: the model, its tokenizer, the LoRA states.

``SQSDScorer.from_pretrained`` and ``GradientStats.from_pretrained`` both go through here,
so a model path, an in-memory model and a ``PeftModel`` holding adapters are accepted the
same way by both.
"""
from __future__ import annotations

import os

from sqsd_fast.data.tokenize import load_tokenizer
from sqsd_fast.models import resolve_model
from sqsd_fast.models.adapters import attach_state, load_base_model, state_modules
from sqsd_fast.models.quiet import quiet_libraries


def load_model_and_tokenizer(model, *, dtype="float32", device=None, tokenizer=None, quantization=None):
    """(base model, tokenizer): ``model`` is a directory, hub id or .gguf (loaded with
    ``dtype`` onto ``device`` or the CPU, its linear layers in 4 or 8 bits with
    ``quantization``) or an in-memory model (dtype kept, moved only when ``device`` is
    given). The tokenizer, unless given, is loaded from ``model`` when it is a path (a
    .gguf: the converted directory's), else None."""

    with quiet_libraries():       # a library call shows our progress, not transformers' loading chatter
        base = load_base_model(model, dtype=dtype, device=device, quantization=quantization)
    if tokenizer is None and isinstance(model, (str, os.PathLike)):
        tokenizer = load_tokenizer_or_none(resolve_model(model))
    return base, tokenizer


def load_tokenizer_or_none(path: str):
    """The tokenizer of a model directory, or None: scoring works without one (padding ids
    are masked out); only data files and records need it."""

    try:
        return load_tokenizer(path)
    except ValueError:
        return None


def free_adapter_name(peft_model, name: str) -> str:
    """``name``, or ``name_2``, ``name_3``, ... whichever the model does not hold yet."""
    taken = set(getattr(peft_model, "peft_config", {}))
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def adapter_names(model) -> frozenset:
    """The adapters an in-memory ``PeftModel`` holds (none for a plain model)."""
    return frozenset(getattr(model, "peft_config", {}) or {})


def use_or_attach_state(model, source, name: str, *, held: frozenset | None = None):
    """(peft model, adapter name) of a LoRA state: ``source`` names an adapter of ``held``
    (default: what ``model`` holds now; pass what the caller's model held before this
    loader attached anything, so that a directory named like an attached state still loads
    from disk), or is an adapter directory loaded onto ``model`` under ``name`` (or a free
    variant of it; the model is wrapped in place if it is not a ``PeftModel`` yet). The
    state's modules are checked either way."""

    held = adapter_names(model) if held is None else held
    if isinstance(source, str) and source in held:
        state_modules(model, source)
        return model, source
    adapter = free_adapter_name(model, name)
    with quiet_libraries():
        return attach_state(model, source, adapter), adapter
