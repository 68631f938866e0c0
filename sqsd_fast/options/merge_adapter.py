"""The options of ``merge-adapter`` (sqsd_fast/training/merge.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from sqsd_fast.choices import DTYPE_NAMES
from sqsd_fast.options.base import CheckedOptions, option, required_option


@dataclass(kw_only=True)
class MergeAdapterOptions(CheckedOptions):
    """``merge-adapter``: a LoRA adapter merged into its base model's weights
    (sqsd_fast/training/merge.py)."""

    model: str = required_option("base model the adapter was trained on (directory, hub id or "
                                 ".gguf file)", "DIR")
    adapter: str = required_option("LoRA adapter directory (e.g. train-adapter's --out)", "DIR")
    out: str = required_option("new (or empty) directory for the merged model and its tokenizer",
                               "DIR")
    dtype: str = option("float32", "dtype the base is loaded in, merged in and saved in",
                        choices=DTYPE_NAMES)
    tokenizer: Optional[str] = option(None, "tokenizer saved beside the model (default: --model's)",
                                      "DIR")
    quiet: bool = option(False, "no summary")

    COMMAND: ClassVar[str] = "merge-adapter"
    DESCRIPTION: ClassVar[str] = (
        "Merge --adapter into --model (W + alpha/r B A in every adapted module) and save the "
        "result with its tokenizer to --out, a model directory that every command takes as "
        "--model: what train-adapter --merge-to writes at the end of training, for an adapter "
        "trained earlier. A float32 adapter merged into the base it was trained on gives the "
        "same weights as --merge-to, bit for bit. --out is written to a temporary directory "
        "and renamed into place.")
    EPILOG: ClassVar[str] = (
        "Example:\n  sqsd-fast train-adapter --model BASE --data align.jsonl --out lora_align\n"
        "  sqsd-fast merge-adapter --model BASE --adapter lora_align --out aligned")
