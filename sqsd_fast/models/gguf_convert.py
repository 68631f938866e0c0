"""Checking a GGUF file, and de-quantizing it into a Hugging Face model directory.

:func:`inspect_gguf` reads only the header and metadata (with the ``gguf`` package's
reader) and refuses, with a one-line ``ValueError`` naming the file, anything the long
conversion would fail on later: not a GGUF, truncated or corrupt, an adapter or
vocabulary-only GGUF, no tokenizer. :func:`convert_gguf` then asks transformers for the
model config first (unsupported architectures and non-causal models are refused there,
still before any weight is read), de-quantizes every weight to float32 and writes the
model and its tokenizer with ``save_pretrained``. Caching is the caller's business
(``sqsd_fast.models.resolve``).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata

import torch

GGUF_MAGIC = b"GGUF"
SOURCE_FILE = "sqsd_fast_gguf.json"  # written last into a converted directory: where it came from
# Bump when the conversion changes what it writes: the cache key includes it, so entries
# written by an older conversion are not reused.
CONVERSION_FORMAT = 1
# float32 holds every de-quantized value exactly (a Q4/Q8 block value is an fp16 scale
# times a small integer plus an fp16 offset); scoring then picks its own dtype.
SAVED_DTYPE = "float32"


@dataclass(frozen=True)
class GGUFInfo:
    """What the header of a model GGUF says."""

    path: str
    size: int                 # bytes
    architecture: str         # general.architecture, e.g. "llama"
    name: str | None          # general.name
    n_tensors: int
    tensor_types: tuple[str, ...]  # e.g. ("F32", "Q4_1", "Q6_K"), sorted


def has_gguf_magic(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def inspect_gguf(path) -> GGUFInfo:
    """Reads and checks a GGUF file's header and metadata; a ValueError names what is wrong."""
    path = os.fspath(path)
    where = f"GGUF file {path!r}"
    if not os.path.exists(path):
        raise ValueError(f"{where} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"{where} is not a file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        found = "it is empty" if not head else f"it starts with {head!r}"
        raise ValueError(f"{path!r} is not a GGUF file: a GGUF starts with the magic bytes b'GGUF' and {found}")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ValueError(f"reading {where} needs the gguf package: pip install gguf") from None
    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # the reader fails deep in numpy on a cut or damaged file
        raise ValueError(f"{where} is truncated or corrupt: its header and tensor table cannot be read "
                         f"({_first_line(exc)}); download or copy it again") from None
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ValueError(f"{where} is truncated: its tensors end at byte {end:,} but the file has {size:,} bytes; "
                         "download or copy it again")
    architecture = _string(reader, "general.architecture")
    if not architecture:
        raise ValueError(f"{where} has no general.architecture in its metadata, so it is not a model GGUF")
    kind = _string(reader, "general.type")
    if kind and kind != "model":
        what = "a LoRA adapter" if kind == "adapter" else f"of type {kind!r}"
        raise ValueError(f"{where} is {what}, not a model; give the base model's GGUF "
                         "(or a Hugging Face model directory)")
    if not reader.tensors:
        raise ValueError(f"{where} holds no tensors (a vocabulary-only GGUF?); give a model GGUF")
    if not _string(reader, "tokenizer.ggml.model"):
        raise ValueError(f"{where} has no tokenizer in its metadata (tokenizer.ggml.model); sqsd_fast needs the "
                         "model's tokenizer, so use a GGUF that embeds it")
    return GGUFInfo(path, size, architecture, _string(reader, "general.name") or None, len(reader.tensors),
                    tuple(sorted({t.tensor_type.name for t in reader.tensors})))


def convert_gguf(info: GGUFInfo, out_dir, *, sha256: str, progress: bool = True) -> None:
    """De-quantizes the GGUF described by ``info`` into the (empty) directory ``out_dir``.

    Writes config, float32 safetensors weights, generation config, tokenizer (with its
    chat template) and ``sqsd_fast_gguf.json`` (source, hash, versions) last.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    where = f"GGUF file {info.path!r}"
    directory, name = os.path.split(os.path.abspath(info.path))
    with _hf_progress_bars(progress):
        try:
            config = AutoConfig.from_pretrained(directory, gguf_file=name)
        except Exception as exc:  # transformers: "GGUF model with architecture X is not supported yet."
            raise ValueError(f"{where}: transformers cannot load its architecture {info.architecture!r} from GGUF "
                             f"({_first_line(exc)}); it loads {', '.join(_supported_architectures())}") from None
        if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ValueError(f"{where} holds a {config.model_type!r} model (architecture {info.architecture!r}), "
                             "not a causal language model; SQSD scores causal LMs only")
        # dequantize=True: transformers would otherwise keep weights packed in GGUF blocks where a
        # matmul kernel is installed; LoRA wrapping and save_pretrained need plain float weights.
        try:
            model, loading = AutoModelForCausalLM.from_pretrained(
                directory, gguf_file=name, config=config, dtype=getattr(torch, SAVED_DTYPE),
                quantization_config=GgufConfig(dequantize=True), output_loading_info=True)
        except (ValueError, KeyError, RuntimeError, NotImplementedError, OSError) as exc:
            raise ValueError(f"{where}: transformers could not de-quantize its weights ({_first_line(exc)})") from exc
        # transformers fills weights missing from the file with random values and only logs it;
        # a cached model with random layers would score garbage for ever, so refuse it.
        missing = sorted(set(loading.get("missing_keys", ())) | set(loading.get("mismatched_keys", ())))
        if missing:
            shown = (", ".join(str(k) for k in missing[:3])
                     + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
            raise ValueError(f"{where} lacks weights the {config.model_type} model needs ({shown}); "
                             "the file is incomplete or not a full model")
        _drop_quantization(model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        except (ValueError, KeyError, RuntimeError, NotImplementedError, OSError, ImportError) as exc:
            raise ValueError(f"{where}: transformers could not build its tokenizer ({_first_line(exc)})") from exc
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    source = {
        "format": CONVERSION_FORMAT, "source": os.path.abspath(info.path), "sha256": sha256,
        "gguf": asdict(info), "dtype": SAVED_DTYPE,
        "converted_with": {pkg: _version(pkg) for pkg in ("transformers", "gguf", "torch")},
    }
    with open(os.path.join(out_dir, SOURCE_FILE), "w", encoding="utf-8") as f:
        json.dump(source, f, indent=2)


def _drop_quantization(model) -> None:
    # The weights are plain floats now, but a GGUF-loaded model still carries its quantizer
    # (or at least config.quantization_config), and save_pretrained refuses such a model.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


@contextmanager
def _hf_progress_bars(enabled: bool):
    # transformers draws its own bar while de-quantizing; progress=False must silence it
    # without changing the caller's setting for good.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def _supported_architectures() -> list[str]:
    names = set()
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        names |= set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    except ImportError:
        pass
    try:
        from transformers.integrations.gguf.utils import GGUF_ARCHS

        names |= set(GGUF_ARCHS)
    except ImportError:
        pass
    return sorted(names) or ["(unknown: see the transformers GGUF documentation)"]


def _string(reader, key: str) -> str:
    field = reader.fields.get(key)
    if field is None:
        return ""
    try:
        value = field.contents()
    except Exception:  # a damaged field: treat as absent, the checks after say what is missing
        return ""
    return value if isinstance(value, str) else ""


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
