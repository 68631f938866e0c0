"""The state and the anchor directions of a score or projection run, on one loaded model.

``score`` and ``project`` may take their directions from examples (``--danger-anchors``,
``--safety-anchors``, ``--anchors``, or the shipped sets when nothing is given) and their
state from a fresh LoRA initialisation (no ``--danger-state``). Both are made here, with the
model the scorer then runs: the state is attached once, each anchor set's mean induced
update is taken at it (``GradientStats.mean_update``) or read from the cache, and the
scorer is built on the same ``PeftModel`` (the pipeline does that; this layer cannot).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqsd_fast.data.tokenize import load_tokenizer
from sqsd_fast.engine.loading import load_model_and_tokenizer, use_or_attach_state
from sqsd_fast.influence.anchor_direction import cached_mean_update, direction_key, model_digest
from sqsd_fast.influence.stats import GradientStats
from sqsd_fast.io.checkpoint import path_fingerprint
from sqsd_fast.models.fresh_state import fresh_lora_state

STATE_ADAPTER = "danger_state"


@dataclass
class AnchoredInputs:
    model: Any                      # the PeftModel holding the state as ``adapter``
    adapter: str
    state: Path                     # the state's directory (given, or the cached fresh one)
    tokenizer: Any
    directions: dict[str, Path] = field(default_factory=dict)   # side -> direction directory


def build_anchored_inputs(*, model, state, anchors: dict[str, list], anchor_files: dict[str, str],
                          fields, max_length: int, response_tokens, dtype: str, device: str,
                          backend: str, batch_size: int, max_tokens, tokenizer=None,
                          progress: bool = True, announce: bool = True,
                          gradient_checkpointing: bool = False, quantization: str | None = None) -> AnchoredInputs:
    """Load ``model``, attach ``state`` (None: the cached fresh initialisation) and build or
    read every side's direction from ``anchors`` ({side: tokenized anchors of
    ``anchor_files[side]``})."""
    digest = model_digest(model)
    base, tok = load_model_and_tokenizer(model, dtype=dtype, device=device,
                                         tokenizer=_tokenizer(tokenizer), quantization=quantization)
    if state is None:
        state = fresh_lora_state(base, digest)
    peft_model, adapter = use_or_attach_state(base, os.fspath(state), STATE_ADAPTER)
    peft_model.to(next(base.parameters()).device)
    inputs = AnchoredInputs(peft_model, adapter, Path(state), tok)
    if not anchors:
        return inputs
    stats = GradientStats(peft_model, adapter=adapter, tokenizer=tok, backend=backend,
                          batch_size=batch_size, max_tokens=max_tokens, max_length=max_length)
    stats.use_checkpointing(gradient_checkpointing)
    state_digest = path_fingerprint(state)["digest"]
    for side, samples in anchors.items():
        key = direction_key(model_digest=digest, state_digest=state_digest,
                            anchors_digest=path_fingerprint(anchor_files[side], limit=None)["digest"],
                            response_tokens=response_tokens, max_length=max_length,
                            fields=dataclasses.asdict(fields), dtype=dtype,
                            # only when set: directions cached before quantization existed stay valid
                            **({"quantization": quantization} if quantization else {}))
        inputs.directions[side], _ = cached_mean_update(
            stats, samples, key, label=f"{side} anchors {anchor_files[side]}", response_tokens=response_tokens,
            progress=progress, announce=announce, base_model=str(model))
    return inputs


def _tokenizer(source):
    if source is None:
        return None
    return load_tokenizer(source, option="--tokenizer")

