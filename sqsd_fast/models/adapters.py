"""Loading the base model once, LoRA *states* as named adapters, and LoRA *directions*.

A **state** is a LoRA adapter the induced update is computed at: it is loaded onto the
one ``PeftModel`` as a named adapter ("danger_state", "safety_state") and switched with
``set_adapter``; the base model is never loaded twice. A **direction** is only read:
its factors A_d, B_d per module give ``D_m = B_d A_d`` with the adapter's alpha/r
scaling dropped (docs/METHOD.md §1); it is never activated.

Only plain LoRA on linear layers (``nn.Linear``, and GPT-2 style ``Conv1D``, whose LoRA
factors peft keeps in the usual (r, d_in) / (d_out, r) layout) is supported. Everything
else is refused with a ``ValueError`` that names the adapter directory and the problem.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sqsd_fast.choices import DTYPE_NAMES, check_choice
from sqsd_fast.data.records import looks_like_local_path
from sqsd_fast.models import resolve_model
from sqsd_fast.models.cache import atomic_directory
from sqsd_fast.models.quantized import quantization_config

PEFT_PREFIX = "base_model.model."
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_FACTOR_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$")


@dataclass(frozen=True)
class LoraFactors:
    """One module's LoRA factors: ``A`` (r, d_in), ``B`` (d_out, r)."""

    A: torch.Tensor
    B: torch.Tensor


Direction = Mapping[str, LoraFactors]  # module name (relative to the base model) -> factors


def resolve_dtype(dtype) -> torch.dtype:
    """A name of :data:`sqsd_fast.choices.DTYPE_NAMES` or such a ``torch.dtype`` -> ``torch.dtype``."""
    allowed = {name: getattr(torch, name) for name in DTYPE_NAMES}
    if isinstance(dtype, torch.dtype) and dtype in allowed.values():
        return dtype
    return allowed[check_choice("dtype", dtype, DTYPE_NAMES)]


def load_base_model(model, *, dtype="float32", device=None, quantization: str | None = None) -> nn.Module:
    """A causal LM from a local directory or hub id (loaded once), or an in-memory model.

    In-memory models are used as they are: their dtype is kept, and they stay on their
    device unless ``device`` is given. Models loaded from a path go to ``device`` or the CPU;
    ``quantization`` "4bit" or "8bit" loads their linear layers with bitsandbytes
    (sqsd_fast/models/quantized.py).
    """
    if isinstance(model, nn.Module):
        if quantization is not None:
            raise ValueError("quantization applies to a model loaded from a path; quantize an in-memory "
                             "model when you load it (transformers' BitsAndBytesConfig)")
        return model if device is None else model.to(device)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path, a hub id or a torch.nn.Module; got {type(model).__name__}")

    path = resolve_model(model)  # a .gguf file -> its de-quantized, cached model directory
    if looks_like_local_path(path) and not os.path.isdir(path):
        raise ValueError(f"model directory {path!r} does not exist")
    from transformers import AutoModelForCausalLM

    if quantization is not None:
        config = quantization_config(quantization, resolve_dtype(dtype))
        return AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype), quantization_config=config,
                                                    device_map={"": str(device or "cpu")}).eval()
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype))
    return loaded.to(device or "cpu").eval()


# ----------------------------------------------------------------------------- reading


def _adapter_files(path) -> tuple[str, str]:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"an adapter must be given as a directory path; got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"adapter directory {path!r} does not exist")
    config = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config):
        raise ValueError(f"adapter directory {path!r} has no adapter_config.json (is it a peft LoRA adapter?)")
    for name in _WEIGHT_FILES:
        weights = os.path.join(path, name)
        if os.path.isfile(weights):
            return config, weights
    raise ValueError(f"adapter directory {path!r} has no weights file ({' or '.join(_WEIGHT_FILES)})")


def read_adapter(path) -> dict[str, LoraFactors]:
    """Reads a peft LoRA adapter directory without touching any model.

    Returns ``{module name relative to the base model: LoraFactors}`` (float32, CPU).
    Raises ``ValueError`` naming ``path`` for anything that is not plain LoRA on linear
    layers: another peft type, DoRA, LoRA on embeddings, LoRA biases, modules_to_save.
    """
    config_path, weights_path = _adapter_files(path)
    path = os.fspath(path)
    config = _read_adapter_config(path, config_path)
    state = _load_adapter_weights(path, weights_path)
    out = _pair_factors(path, _group_factors(path, state))
    _check_config_rank(path, config, out)
    return out


def _read_adapter_config(path: str, config_path: str) -> dict:
    """adapter_config.json, refused unless it describes plain LoRA (no other peft type, no DoRA)."""
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"adapter {path!r}: adapter_config.json is not valid JSON ({exc}); "
                         "save the adapter again with peft's save_pretrained") from None
    if not isinstance(config, dict):
        raise ValueError(f"adapter {path!r}: adapter_config.json must hold a JSON object")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ValueError(f"adapter {path!r} is a {peft_type or 'unknown'} adapter; only LoRA adapters are supported")
    if config.get("use_dora"):
        raise ValueError(f"adapter {path!r} uses DoRA (use_dora=true); only plain LoRA is supported")
    return config


def _load_adapter_weights(path: str, weights_path: str) -> dict[str, torch.Tensor]:
    """The weights file's tensors on the CPU; a damaged file is one ``ValueError``, whatever the loader raised."""
    try:
        if weights_path.endswith(".safetensors"):
            return load_file(weights_path, device="cpu")
        return torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and pickle raise many types for a damaged file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"adapter {path!r}: cannot read {os.path.basename(weights_path)} ({first}); "
                         "the file is damaged or incomplete, save the adapter again") from None


def _group_factors(path: str, state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{module: {"A"|"B": float32 factor}}`` from the state dict's keys; anything but 2-D LoRA A/B
    weights on linear layers is refused."""
    embedding_keys = [key for key in state if "lora_embedding" in key]
    if embedding_keys:
        raise ValueError(
            f"adapter {path!r} puts LoRA on an embedding layer ({embedding_keys[0]}); SQSD scoring supports LoRA on "
            "linear layers only"
        )
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _FACTOR_KEY.match(key)
        if match is None:
            raise ValueError(
                f"adapter {path!r} holds {key!r}, which is not a LoRA A/B weight (DoRA magnitudes, LoRA biases "
                "and modules_to_save are not supported)"
            )
        module = match["module"]
        module = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module
        if tensor.dim() != 2:
            raise ValueError(
                f"adapter {path!r}: {key} has shape {tuple(tensor.shape)}; only LoRA on linear layers "
                "(2-D factors) is supported"
            )
        factors.setdefault(module, {})[match["factor"]] = tensor.float()
    if not factors:
        raise ValueError(f"adapter {path!r} holds no LoRA weights")
    return factors


def _pair_factors(path: str, factors: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, LoraFactors]:
    """Each module's A and B as ``LoraFactors``: both present, of one rank, and finite."""
    out = {}
    for module, pair in factors.items():
        if set(pair) != {"A", "B"}:
            raise ValueError(
                f"adapter {path!r}: module {module} has lora_{next(iter(pair))} but not its partner factor"
            )
        if pair["B"].shape[1] != pair["A"].shape[0]:
            raise ValueError(
                f"adapter {path!r}: module {module} has lora_A {tuple(pair['A'].shape)} and lora_B "
                f"{tuple(pair['B'].shape)}, which do not share a rank"
            )
        for factor, tensor in pair.items():
            if not torch.isfinite(tensor).all():
                raise ValueError(f"adapter {path!r}: module {module} lora_{factor} holds NaN or Inf values; "
                                 "the adapter is damaged (or its training diverged)")
        out[module] = LoraFactors(pair["A"], pair["B"])
    return out


def _check_config_rank(path: str, config: dict, factors: Mapping[str, LoraFactors]) -> None:
    """peft builds layers from the config's rank, then fails with a very long error if the
    weights have another; say it in one line, naming the module."""
    rank = config.get("r")
    if not isinstance(rank, int) or config.get("rank_pattern"):
        return  # per-module ranks: peft checks them
    for module, f in factors.items():
        if f.A.shape[0] != rank:
            raise ValueError(f"adapter {path!r}: adapter_config.json says r = {rank} but module {module} "
                             f"has rank {f.A.shape[0]} weights; the config and the weights do not belong together")


def check_direction_is_usable(factors: Mapping[str, LoraFactors]) -> None:
    """A direction must be finite and non-zero in at least one module.

    A LoRA saved before any training step has B = 0, so ``D_m = B_d A_d = 0`` everywhere:
    every projection would be 0 and SQSD silently minus the safety term alone.
    """
    for module, f in factors.items():
        if not (torch.isfinite(f.A).all() and torch.isfinite(f.B).all()):
            raise ValueError(f"module {module} of the direction holds NaN or Inf values")
    if all(float(f.B.abs().max()) == 0.0 or float(f.A.abs().max()) == 0.0 for f in factors.values()):
        raise ValueError("the direction is zero in every module (lora_B = 0: an adapter saved before "
                         "any training step?); train it first")


def linear_shape(module: nn.Module, *, where: str) -> tuple[int, int]:
    """``(d_out, d_in)`` of a linear layer (unwrapping a peft LoRA wrapper); refuses others."""
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    if isinstance(base, nn.Linear):
        return base.out_features, base.in_features
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always has it
        Conv1D = ()
    if Conv1D and isinstance(base, Conv1D):
        # GPT-2 Conv1D stores weight as (d_in, d_out); peft's LoRA factors are still (r, d_in), (d_out, r).
        return base.weight.shape[1], base.weight.shape[0]
    if isinstance(base, nn.Embedding):
        raise ValueError(f"{where}: LoRA on an embedding layer is not supported (linear layers only)")
    raise ValueError(f"{where}: layer type {type(base).__name__} is not supported (only nn.Linear and Conv1D)")


def check_against_model(path, factors: Mapping[str, LoraFactors], base_model: nn.Module) -> None:
    """Checks that every module of the adapter exists in ``base_model`` with matching shapes.

    ``base_model`` is the plain transformers model (module names without the peft prefix).
    """
    modules = dict(base_model.named_modules())
    for name, f in factors.items():
        where = f"adapter {os.fspath(path)!r}, module {name}"
        if name not in modules:
            raise ValueError(
                f"adapter {os.fspath(path)!r} targets module {name}, which the base model does not have "
                "(an adapter for a different base model?)"
            )
        d_out, d_in = linear_shape(modules[name], where=where)
        if f.A.shape[1] != d_in or f.B.shape[0] != d_out:
            raise ValueError(
                f"{where}: LoRA factors A {tuple(f.A.shape)}, B {tuple(f.B.shape)} do not fit the base layer "
                f"(d_out x d_in = {d_out} x {d_in}); the adapter was trained for a different base model"
            )


# ----------------------------------------------------------------------------- states


def base_of(peft_model) -> nn.Module:
    """The plain transformers model inside a ``PeftModel``."""
    return peft_model.get_base_model()


def attach_state(model: nn.Module, path, adapter_name: str):
    """Loads LoRA adapter ``path`` as ``adapter_name`` onto ``model``; returns the ``PeftModel``.

    ``model`` is a plain transformers model (it gets wrapped; this modifies it in place)
    or a ``PeftModel`` that already holds other adapters (the base is not loaded again).
    """
    from peft import PeftModel

    factors = read_adapter(path)
    base = base_of(model) if isinstance(model, PeftModel) else model
    check_against_model(path, factors, base)
    if isinstance(model, PeftModel):
        if adapter_name in model.peft_config:
            raise ValueError(f"the model already has an adapter named {adapter_name!r}")
        model.load_adapter(os.fspath(path), adapter_name=adapter_name, is_trainable=False)
        peft_model = model
    else:
        peft_model = PeftModel.from_pretrained(model, os.fspath(path), adapter_name=adapter_name, is_trainable=False)
    state_modules(peft_model, adapter_name, where=f"adapter {os.fspath(path)!r}")  # refuse unsupported layers early
    return peft_model.eval()


def lora_linear_classes() -> tuple[type, ...]:
    """peft's LoRA layers on a linear layer: the float one and, where bitsandbytes is
    installed, those on its 4-bit and 8-bit linear layers (QLoRA). All compute
    ``base(x) + B(A(dropout(x))) * scaling`` with float factors, so a sample's update is the
    same function of the layer's input and output gradient whatever the base's precision."""
    from peft.tuners.lora import Linear as LoraLinear
    kinds = [LoraLinear]
    try:
        from peft.tuners.lora import bnb as lora_bnb
    except ImportError:   # pragma: no cover - peft always has the module; bitsandbytes may be absent
        return tuple(kinds)
    kinds += [getattr(lora_bnb, name) for name in ("Linear4bit", "Linear8bitLt") if hasattr(lora_bnb, name)]
    return tuple(kinds)


def state_modules(peft_model, adapter_name: str, *, where: str | None = None) -> dict[str, nn.Module]:
    """``{module name relative to the base model: peft LoRA layer}`` holding ``adapter_name``.

    In model order. Raises ``ValueError`` for LoRA layers scoring cannot handle
    (embeddings, convolutions, DoRA and other LoRA variants).
    """
    from peft.tuners.lora import LoraLayer

    linear_kinds = lora_linear_classes()
    where = where or f"adapter {adapter_name!r}"
    if adapter_name not in getattr(peft_model, "peft_config", {}):
        raise ValueError(f"the model has no adapter named {adapter_name!r}")
    found = {}
    for full_name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        name = full_name[len(PEFT_PREFIX):] if full_name.startswith(PEFT_PREFIX) else full_name
        if adapter_name in getattr(module, "lora_embedding_A", {}):
            raise ValueError(f"{where}: LoRA on embedding layer {name} is not supported (linear layers only)")
        if adapter_name not in module.lora_A:
            continue
        if type(module) not in linear_kinds:
            raise ValueError(f"{where}: LoRA layer {name} is a {type(module).__name__}; "
                             "only LoRA on linear layers is supported")
        if adapter_name in getattr(module, "lora_variant", {}) or getattr(module, "use_dora", {}).get(adapter_name):
            raise ValueError(f"{where}: layer {name} uses a LoRA variant (e.g. DoRA); only plain LoRA is supported")
        linear_shape(module, where=f"{where}, module {name}")
        found[name] = module
    if not found:
        raise ValueError(f"{where}: no LoRA linear layers hold adapter {adapter_name!r}")
    return found


def state_factors(peft_model, adapter_name: str) -> dict[str, LoraFactors]:
    """The live A, B weights of an adapter loaded on the model (no copy)."""
    return {
        name: LoraFactors(m.lora_A[adapter_name].weight, m.lora_B[adapter_name].weight)
        for name, m in state_modules(peft_model, adapter_name).items()
    }


# ----------------------------------------------------------------------------- directions


def load_direction(source, peft_model, *, device=None) -> dict[str, LoraFactors]:
    """A direction's factors, read without activating anything.

    ``source``: an adapter directory, or the name of an adapter already on ``peft_model``
    (its weights are copied). Returned float32 on ``device`` (default: the model's).
    The alpha/r scaling is dropped: ``D_m = B_d A_d``.
    """
    if device is None:
        device = next(peft_model.parameters()).device
    if isinstance(source, str) and source in getattr(peft_model, "peft_config", {}):
        factors = {
            n: LoraFactors(f.A.detach().float().clone(), f.B.detach().float().clone())
            for n, f in state_factors(peft_model, source).items()
        }
    else:
        factors = read_adapter(source)
        check_against_model(source, factors, base_of(peft_model))
    return {n: LoraFactors(f.A.to(device), f.B.to(device)) for n, f in factors.items()}


def check_direction_matches_state(direction: Mapping[str, LoraFactors], state_names, *, direction_name,
                                  state_name) -> None:
    """The direction and the state must cover exactly the same LoRA modules."""
    direction_set, state_set = set(direction), set(state_names)
    missing = sorted(direction_set - state_set)
    if missing:
        raise ValueError(
            f"direction {direction_name} has LoRA modules that state {state_name} lacks: {_few(missing)}; "
            "the direction and the state must target the same modules"
        )
    extra = sorted(state_set - direction_set)
    if extra:
        raise ValueError(
            f"state {state_name} has LoRA modules that direction {direction_name} lacks: {_few(extra)}; "
            "the direction and the state must target the same modules"
        )


def _few(names, limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def save_direction(factors: Mapping[str, LoraFactors], path, *, base_model: str | None = None,
                   about: dict | None = None) -> None:
    """Writes a direction ``{module: LoraFactors}`` as a LoRA adapter directory that every
    ``--*-direction`` option (and peft) reads: ``adapter_config.json`` (r = the factors' rank,
    lora_alpha = r, so the alpha/r scaling a direction drops is 1 anyway) and
    ``adapter_model.safetensors`` (float32). ``about`` (JSON) goes to ``direction.json``:
    where the direction came from. The directory appears whole or not at all; an existing
    ``path`` is refused."""

    path = Path(path)
    if path.exists():
        raise ValueError(f"{path} already exists; give a new directory for the direction")
    check_direction_is_usable(factors)
    ranks = {name: int(f.A.shape[0]) for name, f in factors.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)   # the most common rank
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": r,
              "lora_dropout": 0.0, "bias": "none", "use_dora": False, "use_rslora": False,
              "target_modules": sorted({name.rsplit(".", 1)[-1] for name in factors}),
              "rank_pattern": {name: k for name, k in ranks.items() if k != r},
              "alpha_pattern": {name: k for name, k in ranks.items() if k != r},
              "base_model_name_or_path": base_model, "inference_mode": True}
    state = {}
    for name, f in factors.items():
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = f.A.detach().float().cpu().contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = f.B.detach().float().cpu().contiguous()
    with atomic_directory(path) as tmp:
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=1) + "\n")
        save_file(state, str(tmp / "adapter_model.safetensors"))
        if about is not None:
            (tmp / "direction.json").write_text(json.dumps(about, indent=1, default=str) + "\n")
