"""Checks of user-given paths and devices, made before anything is loaded.

Each names the option and says what would be right; every command (score, project,
baseline, train-adapter, evaluate) uses the same ones, so the same mistake gets the same
message everywhere.
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

from sqsd_fast.data.records import looks_like_local_path
from sqsd_fast.io.writers import output_format


def check_device_available(device: str) -> None:
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device visible"
        raise ValueError(f"--device {device}: CUDA is not available here ({build}); use --device cpu")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")


def check_output_path(out: str, data: str) -> None:
    output_format(out)
    p = Path(out)
    if p.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name such as "
                         f"{p / 'scores.jsonl'}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"--out {out}: the directory {p.parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: the directory {parent} is not writable")
    if Path(data).exists() and p.exists() and p.resolve() == Path(data).resolve():
        raise ValueError(f"--out {out} is the input data file; choose another output name")


def check_adapter_path(option: str, path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{option} {path}: directory not found")
    if not p.is_dir() or not (p / "adapter_config.json").is_file():
        raise ValueError(f"{option} {path}: not a LoRA adapter directory (no "
                         f"adapter_config.json; save one with peft's save_pretrained)")


def check_model_path(path: str) -> None:
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".gguf":
        return  # converted (once, cached) when the model is loaded
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise ValueError(f"--model {path}: not a model directory (no config.json) or .gguf file")
    elif p.suffix.lower() == ".gguf":
        raise ValueError(f"--model {path}: file not found")
    elif looks_like_local_path(path):
        raise ValueError(f"--model {path}: directory not found")
    else:
        check_hub_reachable(path)


def check_hub_reachable(model_id: str, timeout: float = 3.0) -> None:
    """A hub id that is not in the local cache needs the hub: say at once when it cannot be
    reached, instead of after a minute of retries blamed on the tokenizer."""
    from huggingface_hub import constants, try_to_load_from_cache
    cached = try_to_load_from_cache(model_id, "config.json")
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"--model {model_id}: not a local directory, not in the Hugging Face "
                         f"cache, and HF_HUB_OFFLINE is set; give a local model directory")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    reached = []

    def probe():  # in a thread: a DNS lookup has no timeout of its own
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if not reached:
        raise ValueError(f"--model {model_id}: not a local directory, and the Hugging Face hub "
                         f"({host}) cannot be reached to download it; give a local model "
                         f"directory (or check the network)")
