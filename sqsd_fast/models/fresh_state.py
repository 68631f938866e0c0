"""A fresh LoRA initialisation of a base model, made once and cached: the state that
zero-configuration scoring takes projections at when no ``--danger-state`` is given.

At a fresh initialisation ``B = 0`` (peft's default), so a sample's induced update is
``-s G_B A``: its full-weight gradient seen through the random row space of ``A``; no data
and no training are needed. The adapter is written to the cache under a key of the model's
content, the LoRA settings and the seed, so every run on that model uses the same state.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from sqsd_fast.models.cache import atomic_directory, cache_root

# r, alpha, dropout and modules as train-adapter's defaults (the authors' LoRA settings)
FRESH_STATE = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear", "seed": 0}
DESCRIPTION = "a fresh LoRA initialisation (r 8, alpha 16, all linear modules, seed 0)"


def fresh_state_path(model_digest: str, cache_dir=None) -> Path:
    """Where the fresh state of the model with content digest ``model_digest`` is cached."""
    import peft
    key = {"model": model_digest, **FRESH_STATE, "peft": peft.__version__,
           "torch": torch.__version__.split("+")[0]}   # the init's random draws may change with either
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root(cache_dir) / "states" / f"lora-init-{digest}"


def fresh_lora_state(base_model, model_digest: str, *, cache_dir=None) -> Path:
    """The cached fresh LoRA state of ``base_model`` (a plain transformers model, left as it
    was), made now if missing; its adapter directory."""
    from peft import LoraConfig, get_peft_model

    path = fresh_state_path(model_digest, cache_dir)
    if (path / "adapter_config.json").is_file():
        return path
    settings = {k: v for k, v in FRESH_STATE.items() if k != "seed"}
    # peft draws A on the CPU before moving it to the base layer's device, so the state is
    # the same whatever device the model is on
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FRESH_STATE["seed"])
        peft_model = get_peft_model(base_model, LoraConfig(task_type="CAUSAL_LM", **settings))
    try:
        # appears whole or not at all; a second process making it too keeps the first's
        with atomic_directory(path) as tmp:
            peft_model.save_pretrained(tmp)
            (tmp / "state.json").write_text(json.dumps(
                {"made_by": "sqsd_fast (zero-configuration state)", "what": DESCRIPTION,
                 "model_digest": model_digest, **FRESH_STATE}, indent=1) + "\n")
    finally:
        peft_model.unload()            # the base model's own modules back in place
    return path
