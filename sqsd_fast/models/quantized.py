"""Quantized bases (QLoRA): the base model's linear layers loaded in 4 or 8 bits by
bitsandbytes, the LoRA factors kept float.

A LoRA layer on a quantized linear computes ``base(x) + B(A(dropout(x))) * scaling`` like the
float one, so a sample's induced update is the same function of the layer's input and output
gradient: scoring on a quantized base is exact for that quantized model (not for the float
model it was made from). bitsandbytes is optional (`pip install sqsd_fast[quantized]`).
"""
from __future__ import annotations

from sqsd_fast.models.quiet import quiet_libraries

QUANTIZATIONS = ("4bit", "8bit")
INSTALL_HINT = "pip install 'bitsandbytes>=0.50' (or sqsd_fast[quantized])"


def check_bitsandbytes(option: str) -> None:
    """A one-line ValueError naming ``option`` and what to install when bitsandbytes cannot
    be imported."""
    try:
        with quiet_libraries():   # its CPU backend announces optional kernels it did not find
            import bitsandbytes  # noqa: F401
    except Exception as exc:      # ImportError, or a library it cannot load on this machine
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{option} needs bitsandbytes, which cannot be imported here ({first}); "
                         f"{INSTALL_HINT}") from None


def quantization_config(kind: str, dtype):
    """transformers' ``BitsAndBytesConfig`` for ``kind`` ("4bit": NF4 weights computing in
    ``dtype``, as QLoRA; "8bit": LLM.int8())."""
    if kind not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {kind!r}")
    check_bitsandbytes(f"--load-in-{kind}")
    from transformers import BitsAndBytesConfig
    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)
