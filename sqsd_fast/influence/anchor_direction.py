"""Directions from anchor samples instead of trained adapters.

The mean induced update of an anchor set at a state, ``dW_m = -(mean G_B A + B mean G_A)``,
is a rank-2r direction per module (``GradientStats.mean_update``, factors.py); written as
a LoRA adapter directory, it is what ``--danger-direction`` reads. SQSD then asks how far
a sample's update points along the update the anchors would make, as gradient matching
asks how far its gradient points along the anchors' (He et al. 2024), so the two differ
only in the score, not in where the direction comes from (issue #17).

Two fronts share the pieces below: ``sqsd-fast anchor-direction`` writes one direction to
a directory of the user's; ``score`` / ``project`` with ``--danger-anchors`` /
``--safety-anchors`` (or no direction at all: the shipped anchor sets) build theirs in the
run, cached under ``$SQSD_FAST_CACHE/directions`` by the content of everything that makes
them (model, state, anchors, options), so a second run reuses them.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sqsd_fast.data.records import read_records
from sqsd_fast.data.tokenize import count_response_tokens, load_tokenizer, tokenize_records
from sqsd_fast.influence.inputs import limit_response_tokens
from sqsd_fast.influence.stats import GradientStats
from sqsd_fast.io.checkpoint import path_fingerprint
from sqsd_fast.models import resolve_model
from sqsd_fast.models.adapters import save_direction
from sqsd_fast.models.cache import cache_root
from sqsd_fast.models.quantized import check_bitsandbytes
from sqsd_fast.models.quiet import quiet_libraries
from sqsd_fast.options import AnchorDirectionOptions
from sqsd_fast.options.checks import check_adapter_path, check_device_available, check_model_path

# A mean over one sample is that sample's own update: its cosine with itself is 1 and with
# everything else is what that one sample happens to share, not what a set has in common.
MIN_ANCHORS = 2


@dataclass
class AnchorDirectionResult:
    options: AnchorDirectionOptions
    out: Path
    n_anchors: int             # anchors with a response token (the others are left out)
    n_modules: int
    rank: int                  # of the direction in every module (2 x the state's rank)
    seconds: float


# ----------------------------------------------------------------------- anchors


def read_anchor_samples(path, *, option: str, fields, tokenizer, max_length: int,
                        response_tokens: int | None = None, vocab_size: int | None = None) -> list:
    """The anchors of ``path`` tokenized and checked, before any model is loaded where the
    vocabulary size is known: each problem a one-line ``ValueError`` naming ``option`` and
    the file (unreadable, no response token left after truncation, fewer than two usable
    anchors, token ids outside the vocabulary)."""
    where = f"{option} {os.fspath(path)}"
    try:
        samples = tokenize_records(read_records(path, fields), tokenizer, max_length=max_length)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if vocab_size is not None:
        for s in samples:
            bad = [t for t in s.input_ids if t < 0 or t >= vocab_size]
            if bad:
                raise ValueError(f"{where}: anchor {s.index} has token id {bad[0]}, outside the model's "
                                 f"vocabulary (0..{vocab_size - 1}); were its input_ids made with another "
                                 "tokenizer?")
    usable = [s for s in samples if count_response_tokens(limit_response_tokens(s, response_tokens).labels) > 0]
    if not usable:
        raise ValueError(f"{where}: none of its {len(samples)} anchors keeps a response token after "
                         f"truncation to {max_length} tokens; give a larger --max-length or shorter prompts")
    if len(usable) < MIN_ANCHORS:
        raise ValueError(f"{where}: {len(usable)} usable anchor; a direction needs at least {MIN_ANCHORS} "
                         "(the mean update of one sample is only that sample's own update)")
    return samples


def anchors_in_data(anchors: list, data: list) -> list[tuple[int, int]]:
    """(anchor index, data index) of every anchor that is also a sample of the scored data
    (the same tokens and loss positions): such a sample is scored against a direction it
    helped make, which a reviewer checks first."""
    seen = {(tuple(s.input_ids), tuple(s.labels)): s.index for s in data}
    return [(a.index, seen[key]) for a in anchors
            if (key := (tuple(a.input_ids), tuple(a.labels))) in seen]


# ----------------------------------------------------------------------- cache


def model_digest(model) -> str:
    """The model's content digest (a hub id: its name): what a direction records as its
    model and what the cache keys start with."""
    return path_fingerprint(model).get("digest") or f"name:{model}"


def direction_key(*, model_digest, state_digest, anchors_digest, response_tokens, max_length,
                  fields, dtype, quantization: str | None = None) -> dict:
    """Everything that makes an anchor direction (backend and batching do not); a quantized
    base only when set, so that the keys of float bases are those of earlier versions."""
    key = {"model": model_digest, "state": state_digest, "anchors": anchors_digest,
           "response_tokens": response_tokens, "max_length": max_length,
           "fields": fields, "dtype": dtype, "formula": "-(mean G_B A + B mean G_A)"}
    if quantization:
        key["quantization"] = quantization
    return key


def cached_direction_path(key: dict, cache_dir=None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_root(cache_dir) / "directions" / digest


def check_cached_direction(path: Path, key: dict) -> None:
    """A cached direction must have been made from ``key``'s inputs (model included)."""
    about_file = path / "direction.json"
    about = json.loads(about_file.read_text()) if about_file.is_file() else {}
    if about.get("key") != json.loads(json.dumps(key, default=str)):
        made = about.get("key", {}).get("model", "unknown")
        raise ValueError(f"cached direction {path} was made from other inputs (model {made}, not "
                         f"{key['model']}); delete that directory and run again")


def check_direction_model(path, model_digest, option: str) -> None:
    """A direction directory made from anchors records its model; refuse it for another."""
    about_file = Path(path) / "direction.json"
    if model_digest is None or not about_file.is_file():
        return
    made = json.loads(about_file.read_text()).get("model_digest")
    if made is not None and made != model_digest:
        raise ValueError(f"{option} {os.fspath(path)}: this direction was built from anchors on another model "
                         f"(content {made[:19]}..., not --model's {model_digest[:19]}...); "
                         "build it again on this model")


def cached_mean_update(stats, samples, key: dict, *, label: str, response_tokens: int | None,
                       progress: bool, announce: bool = True, base_model: str | None = None,
                       cache_dir=None) -> tuple[Path, bool]:
    """(directory, whether it was cached) of the anchors' mean update at ``stats``' state;
    ``announce``: say on stderr that it is being built (it takes minutes on a CPU)."""
    path = cached_direction_path(key, cache_dir)
    if (path / "adapter_config.json").is_file():
        check_cached_direction(path, key)
        return path, True
    if announce:
        print(f"building the direction of {label} (cached for later runs)", file=sys.stderr)
    direction = stats.mean_update(samples, label=label, response_tokens=response_tokens, progress=progress)
    n_used = sum(1 for s in samples if count_response_tokens(s.labels) > 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_direction(direction, path, base_model=base_model, about={
            "made_by": "sqsd_fast (anchors given to score/project)", "anchors": label,
            "n_anchors": n_used, "key": key, "model_digest": key["model"]})
    except ValueError:
        if not (path / "adapter_config.json").is_file():   # not another run's copy: a real error
            raise
    return path, False


# ----------------------------------------------------------------------- the command


def anchor_direction(options: AnchorDirectionOptions | None = None, /, **kwargs) -> AnchorDirectionResult:
    """Writes the anchors' mean induced update at ``state`` to ``out`` (see the options)."""

    o = options if options is not None else AnchorDirectionOptions(**kwargs)
    started = time.perf_counter()
    out = Path(o.out)     # every check before anything loads
    if out.exists():
        raise ValueError(f"--out {o.out} already exists; give a new directory for the direction")
    if not out.absolute().parent.is_dir():
        raise ValueError(f"--out {o.out}: the directory {out.absolute().parent} does not exist")
    if not Path(o.anchors).is_file():
        raise ValueError(f"--anchors {o.anchors}: file not found")
    check_adapter_path("--state", o.state)
    check_model_path(o.model)
    check_device_available(o.device)
    if o.quantization():
        check_bitsandbytes(f"--load-in-{o.quantization()}")
    source = resolve_model(o.model, progress=not o.quiet)
    tokenizer = load_tokenizer(o.tokenizer or source, option="--tokenizer")
    anchors = read_anchor_samples(o.anchors, option="--anchors", fields=o.field_names(), tokenizer=tokenizer,
                                  max_length=o.max_length, response_tokens=o.response_tokens,
                                  vocab_size=model_vocab_size(source))
    with quiet_libraries():
        stats = GradientStats.from_pretrained(o.model, o.state, tokenizer=tokenizer, dtype=o.dtype,
                                              device=o.device, quantization=o.quantization(), backend=o.backend,
                                              batch_size=o.batch_size, max_length=o.max_length)
    direction = stats.mean_update(anchors, label=f"--anchors {o.anchors}", response_tokens=o.response_tokens,
                                  progress=not o.quiet)
    n_used = sum(1 for s in anchors if count_response_tokens(s.labels) > 0)
    about = {"made_by": "sqsd-fast anchor-direction", "options": asdict(o),
             "anchors": os.fspath(o.anchors), "n_anchors": n_used, "n_records": len(anchors),
             "model_digest": model_digest(o.model),
             "formula": "D_m = -(mean G_B A + B mean G_A) at --state (alpha/r of the state kept in A, B as loaded)"}
    save_direction(direction, out, base_model=o.model, about=about)
    ranks = {int(f.A.shape[0]) for f in direction.values()}
    return AnchorDirectionResult(o, out, n_used, len(direction), max(ranks), time.perf_counter() - started)


def model_vocab_size(model_dir) -> int | None:
    """The vocabulary size in a model directory's config.json (None where it has none), so
    anchors' ids are checked before the weights load."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    size = data.get("vocab_size", data.get("text_config", {}).get("vocab_size"))
    return int(size) if isinstance(size, int) else None


def format_summary(result: AnchorDirectionResult) -> str:
    o = result.options
    return (f"sqsd-fast anchor-direction: mean induced update of {result.n_anchors} anchors from {o.anchors} "
            f"at {o.state}\n  {result.n_modules} modules, rank {result.rank}; written to {result.out} "
            f"in {result.seconds:.1f}s\n  use it as: --danger-direction {result.out}\n"
            f"  as --safety-direction, project at the same state and scaling: --safety-state {o.state} "
            f"--safety-state-scaling <its lora_alpha / r>")
