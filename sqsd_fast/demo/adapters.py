"""The real demo's three LoRA adapters: trained once with ``train_adapter``, then cached.

Each adapter is cached in ``<cache>/demo/adapters/<name>-<key>/adapter/`` (cache root as
for models: ``$SQSD_FAST_CACHE``, else ``~/.cache/sqsd_fast``). The key is a sha256 of
what decides the trained weights: the base model's content digest, the training records
themselves and the training options. A rerun with the same three finds the entry and
skips training; a change to any of them (another model, edited demo text, another
learning rate) gives a new key, so a stale adapter is never reused. Entries appear by an
atomic rename (``sqsd_fast.models.cache.atomic_directory``): a run killed mid-training
leaves no half adapter that a later run would take for a finished one.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from sqsd_fast.models.cache import atomic_directory, cache_root

# Bump when the way the demo trains changes in a way the key below does not capture.
CACHE_FORMAT = 1
ADAPTER_SUBDIR = "adapter"
KEY_FILE = "demo_adapter_key.json"


@dataclass(frozen=True)
class DemoTraining:
    """``train_adapter`` options of the demo's adapters (the rest are its defaults).

    LoRA r 8 / alpha 16 on every linear module, as the SQSD authors. Three short epochs at
    a high learning rate: enough for the update to point somewhere definite (SQSD uses
    only the direction, B A normalised, never its size) while the three adapters train in
    about two minutes on two CPU cores. Dropout 0: a few dozen steps are noisy enough.
    """

    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: str = "all-linear"
    learning_rate: float = 5e-4
    num_epochs: int = 3
    batch_size: int = 4
    max_length: int = 128
    warmup_ratio: float = 0.0
    dtype: str = "float32"


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter to train: a name, a line for the user, its data and seed."""

    name: str          # danger_state | danger_direction | safety
    role: str          # e.g. "danger direction (affirmative answers to mild bad requests)"
    data: Path         # JSONL training file (written by the demo)
    records: tuple     # the same records, hashed into the cache key
    seed: int


def model_digest(model_dir: str | Path) -> str:
    """A content digest of a model directory, cheap for the converted GGUF models.

    A directory converted by ``resolve_model`` names its source GGUF's sha256 (checked
    when it was downloaded) and the conversion format; other directories are hashed file
    by file (``path_fingerprint``; the toy models of the tests are a few hundred kB).
    """
    from sqsd_fast.models.gguf_convert import SOURCE_FILE
    source = Path(model_dir) / SOURCE_FILE
    if source.is_file():
        info = json.loads(source.read_text(encoding="utf-8"))
        return f"gguf-sha256:{info['sha256']}/conversion-v{info.get('format')}/{info.get('dtype')}"
    from sqsd_fast.io.checkpoint import path_fingerprint
    return str(path_fingerprint(model_dir)["digest"])


def adapter_key(digest: str, spec: AdapterSpec, training: DemoTraining) -> str:
    payload = {"format": CACHE_FORMAT, "model": digest, "records": list(spec.records),
               "training": asdict(training), "seed": spec.seed}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def adapter_entry(spec: AdapterSpec, key: str, cache_dir=None) -> Path:
    return cache_root(cache_dir) / "demo" / "adapters" / f"{spec.name}-{key[:20]}"


def ensure_adapter(model_dir: str, spec: AdapterSpec, training: DemoTraining, *,
                   digest: str, cache_dir=None, say: Callable[[str], None] = print) -> Path:
    """The adapter directory for ``spec``: the cached one, or trained now and cached."""
    key = adapter_key(digest, spec, training)
    entry = adapter_entry(spec, key, cache_dir)
    adapter = entry / ADAPTER_SUBDIR
    if (adapter / "adapter_config.json").is_file():
        say(f"  {spec.role}: reusing the cached adapter {adapter} (same model, data and "
            f"options; delete it to train again)")
        return adapter
    say(f"  {spec.role}: training on {len(spec.records)} samples, {training.num_epochs} "
        f"epochs, lr {training.learning_rate:g} ...")
    start = time.perf_counter()
    with atomic_directory(entry) as tmp:
        result = _train(model_dir, spec, training, Path(tmp) / ADAPTER_SUBDIR, say)
        # train_adapter's run lock sits beside its output; it is empty once released.
        (Path(tmp) / f"{ADAPTER_SUBDIR}.lock").unlink(missing_ok=True)
        (Path(tmp) / KEY_FILE).write_text(json.dumps(
            {"key": key, "model": digest, "adapter": spec.name, "seed": spec.seed,
             "training": asdict(training), "n_records": len(spec.records)}, indent=1) + "\n",
            encoding="utf-8")
    losses = ", ".join(f"{x:.3f}" for x in result.epoch_losses)
    say(f"    done in {time.perf_counter() - start:.0f} s ({result.global_step} steps, loss "
        f"per epoch {losses}); cached in {adapter}")
    return adapter


def _train(model_dir: str, spec: AdapterSpec, training: DemoTraining, out: Path, say):
    from sqsd_fast.training import train_adapter
    return train_adapter(model=str(model_dir), data=str(spec.data), out=str(out),
                         seed=spec.seed, quiet=True, callbacks=[_epoch_printer(say)],
                         **asdict(training))


def _epoch_printer(say):
    """A Trainer callback printing one line per epoch: the demo's progress while training
    (quiet=True drops the Trainer's own bar and its raw log dicts)."""
    from transformers import TrainerCallback

    class EpochLines(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                say(f"    epoch {round(state.epoch or 0)}/{int(args.num_train_epochs)}: "
                    f"loss {logs['loss']:.3f}  ({time.perf_counter() - self.start:.0f} s)")

    return EpochLines()
