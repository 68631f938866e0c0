"""The options of ``train-adapter``: one dataclass for the CLI parser, the Python keywords
and the resume fingerprint, built like the scoring commands' (``sqsd_fast/options/``).

The options that training shares with scoring (the model, the data and how its records
are read, what is printed) are the same groups (``options/groups.py``), so the commands
cannot drift apart in how they load a model or read a data file.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from sqsd_fast.choices import (
    DTYPE_NAMES,
    check_choice,
    check_device,
    check_finite_float,
    check_positive_int,
    name_value_pairs,
)
from sqsd_fast.options.base import CheckedOptions, OptionError, check_named_directions, option, required_option
from sqsd_fast.options.groups import DataOptions, ModelOptions, ProgressOptions, QuantizedBaseOptions

# LoRA settings used when neither the caller nor --init-adapter gives them. All linear
# modules: the SQSD authors train their LoRA states and directions on every linear layer.
LORA_DEFAULTS = {"r": 8, "lora_alpha": 16.0, "lora_dropout": 0.05, "target_modules": "all-linear"}


# transformers' schedules (SchedulerType values) that need neither lr_scheduler_kwargs nor
# evaluation metrics (cosine_with_min_lr, warmup_stable_decay, reduce_lr_on_plateau, ...
# do), neither of which train-adapter has. Written out so that building the parser does
# not import transformers' trainer; tests/test_training.py checks them against it.
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup", "inverse_sqrt")


# What --monitor-threshold can do when a projection reaches it.
MONITOR_ACTIONS = ("warn", "stop")
# Direction names become CSV columns and log keys (``drift/<name>_proj``): no separators.

def _positive(name, value, *, optional=False):
    return check_positive_int(name, value, optional=optional)


def _number(low: float, high: float | None = None, *, low_open=False, optional=False):
    """A check for a finite number in [low, high) (or (low, high) when ``low_open``)."""
    def check(name, value):
        if value is None and optional:
            return None
        number = check_finite_float(name, value)
        if number < low or (low_open and number == low) or (high is not None and number >= high):
            lo = "(" if low_open else "["
            hi = f"{high})" if high is not None else "inf)"
            raise ValueError(f"{name} must be in {lo}{low}, {hi}, got {value!r}")
        return number
    return check


def _check_target_modules(name, value):
    if value is None:
        return None
    names = [part.strip() for part in str(value).split(",")]
    if not all(names):
        raise ValueError(f"{name} must be all-linear or comma-separated module names such as "
                         f"q_proj,v_proj, got {value!r}")
    return ",".join(names)


def _check_train_device(name, value):
    value = check_device(name, value)
    if value.startswith("cuda:") and value != "cuda:0":
        # transformers' Trainer always trains on the first visible GPU.
        raise ValueError(f"{name} {value}: training runs on the first visible GPU; pick it "
                         f"with CUDA_VISIBLE_DEVICES={value.split(':')[1]} and --device cuda")
    return value


def _check_monitor_threshold(name, value):
    out = []
    for key, text in name_value_pairs(name, value, "NAME=VALUE"):
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"{name} {key}={text}: the value must be a finite number")
        out.append(f"{key}={number!r}")
    return out


def _check_online_drop(name, value):
    """``top=F after=N`` (F in (0, 1), N >= 0 epochs; after defaults to 1)."""
    pairs = dict(name_value_pairs(name, value, "top=F after=N"))
    if not pairs:
        return []
    unknown = sorted(set(pairs) - {"top", "after"})
    if unknown or "top" not in pairs:
        raise ValueError(f"{name} takes top=FRACTION and optionally after=EPOCHS, got "
                         f"{' '.join(f'{k}={v}' for k, v in pairs.items())}")
    try:
        top, after = float(pairs["top"]), int(pairs.get("after", "1"))
    except ValueError:
        raise ValueError(f"{name}: top must be a fraction and after a whole number of epochs") from None
    if not 0 < top < 1 or after < 0:
        raise ValueError(f"{name}: top must be in (0, 1) and after >= 0, got top={top!r} after={after!r}")
    return [f"top={top!r}", f"after={after}"]


def _check_seed(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


@dataclass(kw_only=True)
class TrainAdapterOptions(ProgressOptions, QuantizedBaseOptions, DataOptions, ModelOptions):
    """``train-adapter``: LoRA supervised fine-tuning, loss on response tokens only."""

    out: str = required_option("adapter output directory (peft adapter_config.json + "
                               "adapter_model.safetensors, train_summary.json; checkpoints under "
                               "OUT/checkpoints while training)", "DIR")
    weight_column: Optional[str] = option(None, "field with a per-sample loss weight (>= 0, "
                                          "e.g. from sqsd-fast filter --weight-column): the "
                                          "loss of a batch is sum w_s loss_s / sum w_s, loss_s "
                                          "a sample's mean token loss (default: no weights, "
                                          "the mean over the batch's tokens)", "NAME")

    r: Optional[int] = option(None, "LoRA rank (default 8, or the --init-adapter's)", "R")
    lora_alpha: Optional[float] = option(None, "LoRA alpha; scaling = alpha/r (default 16, "
                                         "or the --init-adapter's)", "A")
    lora_dropout: Optional[float] = option(None, "dropout on the LoRA input (default 0.05, "
                                           "or the --init-adapter's)", "P")
    target_modules: Optional[str] = option(None, "modules to put LoRA on: all-linear (the "
                                           "default, as the SQSD authors) or names such as "
                                           "q_proj,v_proj", "NAMES")
    learning_rate: float = option(1e-4, "peak learning rate", "LR")
    num_epochs: int = option(3, "passes over the data", "N")
    batch_size: int = option(4, "samples per forward/backward pass (per device)", "N")
    gradient_accumulation_steps: int = option(1, "passes per optimizer step (effective "
                                              "batch = batch size x this)", "N")
    warmup_ratio: float = option(0.03, "fraction of the optimizer steps spent warming up "
                                 "the learning rate, in [0, 1)", "F")
    lr_scheduler_type: str = option("cosine", "learning rate schedule: "
                                    + ", ".join(SCHEDULERS), "NAME",
                                    choices=SCHEDULERS)
    weight_decay: float = option(0.0, "AdamW weight decay (default: 0)", "W")
    seed: int = option(42, "seed for the LoRA init, data order and dropout", "N")
    init_adapter: Optional[str] = option(None, "LoRA adapter directory to continue training "
                                         "from (its rank, alpha and modules are kept)",
                                         "DIR")
    merge_to: Optional[str] = option(None, "also write the base model with the trained LoRA "
                                     "merged in, plus the tokenizer, to this new directory "
                                     "(e.g. to make a safety-aligned base)", "DIR")
    resume: bool = option(False, "continue an interrupted run from the last checkpoint in "
                          "OUT/checkpoints (same options required)")
    overwrite: bool = option(False, "replace a finished adapter or the checkpoints of an "
                             "unfinished run in --out")
    save_steps: Optional[int] = option(None, "save a checkpoint every N optimizer steps "
                                       "(default: at the end of every epoch)", "N")
    save_total_limit: Optional[int] = option(2, "checkpoints kept in OUT/checkpoints (the "
                                             "newest)", "N")
    keep_checkpoints: bool = option(False, "keep OUT/checkpoints after training finishes")
    logging_steps: Optional[int] = option(None, "log the training loss every N optimizer "
                                          "steps (default: once per epoch)", "N")
    monitor_direction: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "monitor the training: every --monitor-steps optimizer steps, log the "
                "projection and cosine of the LoRA update so far on the LoRA adapter DIR's "
                "direction (e.g. a danger and a safety direction) to OUT/drift.csv, the "
                "Trainer's log and OUT/drift.png; repeat it, or give several, for several "
                "directions (default: no monitoring)",
        "metavar": "NAME=DIR", "action": "extend"})
    online_score: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "score every training sample at every step on the LoRA adapter DIR's "
                "direction, from the step's own forward and backward (danger=DIR "
                "safety=DIR also give sqsd): OUT/online/online_scores/*.parquet (a row per "
                "sample per step), OUT/online/online_summary.csv (per epoch) and, in "
                "train_summary.json, each epoch's Spearman with the scores at the start "
                "weights (one extra pass before training); repeatable (default: off)",
        "metavar": "NAME=DIR", "action": "extend"})
    online_drop: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "with --online-score: from epoch N+1 on, leave out the samples whose running "
                "score (their mean online sqsd over the epochs before) is in the top fraction "
                "F; the left-out samples are named in the log and OUT/online/dropped.csv "
                "(default: off)", "metavar": "top=F after=N", "action": "extend"})
    monitor_steps: int = option(10, "optimizer steps between two --monitor-direction "
                                "measurements (one more at the end)", "N")
    monitor_threshold: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "warn (or, with --monitor-action stop, stop training) the first time the "
                "projection on direction NAME reaches VALUE (>=); repeatable (default: none)",
        "metavar": "NAME=VALUE", "action": "extend"})
    monitor_action: str = option("warn", "warn or stop: what --monitor-threshold does; "
                                 "stop ends training there and saves the adapter as it "
                                 "is then",
                                 "ACTION", choices=MONITOR_ACTIONS)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward "
                                          "pass: less memory, slower")
    # Redeclared: the Trainer trains on the first visible GPU only (checked below).
    device: str = option("cpu", "cpu or cuda (the first visible GPU)")

    COMMAND: ClassVar[str] = "train-adapter"
    HELP: ClassVar[str] = "train a LoRA adapter (a direction, a state, or a fine-tune of a subset)"
    DESCRIPTION: ClassVar[str] = (
        "LoRA supervised fine-tuning with peft and transformers' Trainer, loss on the "
        "response tokens only, on the same readers and tokenization as 'score'. --out "
        "becomes a peft adapter directory that 'score' and 'project' accept; --merge-to also "
        "writes the merged full model. Checkpoints in OUT/checkpoints; continue an "
        "interrupted run with --resume.")
    EPILOG: ClassVar[str] = (
        "Examples (the three adapters SQSD needs):\n"
        "  sqsd-fast train-adapter --model BASE --data unsafe.jsonl --out lora_unsafe\n"
        "  sqsd-fast train-adapter --model BASE --data refusals.jsonl --out lora_safe\n"
        "  sqsd-fast train-adapter --model BASE --data benign.jsonl --out lora_initial")
    # Options that cannot change the trained adapter: left out of the resume fingerprint.
    # The monitor only watches, so a resume may add, drop or change it; except that with
    # --monitor-action stop its threshold decides where training ends: train.py then adds
    # that stop rule to the fingerprint ("monitor_stop"), so a resume must keep it.
    NOT_FINGERPRINTED: ClassVar[frozenset] = frozenset(
        {"out", "resume", "overwrite", "merge_to", "save_steps", "save_total_limit",
         "keep_checkpoints", "logging_steps", "gradient_checkpointing", "device",
         "no_progress", "quiet", "monitor_direction", "monitor_steps", "monitor_threshold",
         "online_score",
         "monitor_action"})
    # Fingerprinted by content, not by their text.
    PATH_FIELDS: ClassVar[tuple] = ("model", "tokenizer", "init_adapter")
    CHECKS: ClassVar[dict] = {
        "r": lambda n, v: _positive(n, v, optional=True),
        "lora_alpha": _number(0.0, low_open=True, optional=True),
        "lora_dropout": _number(0.0, 1.0, optional=True),
        "target_modules": _check_target_modules,
        "learning_rate": _number(0.0, low_open=True),
        "num_epochs": _positive,
        "batch_size": _positive,
        "gradient_accumulation_steps": _positive,
        "warmup_ratio": _number(0.0, 1.0),
        "lr_scheduler_type": lambda n, v: check_choice(n, v, SCHEDULERS),
        "weight_decay": _number(0.0),
        "seed": _check_seed,
        "save_steps": lambda n, v: _positive(n, v, optional=True),
        "save_total_limit": lambda n, v: _positive(n, v, optional=True),
        "logging_steps": lambda n, v: _positive(n, v, optional=True),
        "device": _check_train_device,
        "monitor_direction": check_named_directions,
        "online_score": check_named_directions,
        "online_drop": _check_online_drop,
        "monitor_steps": _positive,
        "monitor_threshold": _check_monitor_threshold,
        "monitor_action": lambda n, v: check_choice(n, v, MONITOR_ACTIONS),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("model", "data", "out"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise OptionError(name, f"{name} must be a non-empty path or name")
        if self.resume and self.overwrite:
            raise OptionError("overwrite", "resume continues the run in --out and overwrite "
                                           "starts it over; give one of them")
        if self.dtype == "float16" and self.device == "cpu":
            raise OptionError("dtype", "float16 training needs a GPU (loss scaling); use "
                                       "float32 or bfloat16 on the CPU")
        for name in ("init_adapter", "merge_to"):
            if getattr(self, name) is not None and _same_path(getattr(self, name), self.out):
                raise OptionError(name, f"{name} {getattr(self, name)} is the --out directory; "
                                        f"give a different directory")
        self._check_monitor()
        if self.quantization() and self.merge_to is not None:
            raise OptionError("merge_to", (
                f"merge_to with load_in_{self.quantization()}: merged into the quantized base, the "
                "LoRA would be rounded to its 4 / 8-bit grid; train without merge_to, then merge the "
                "adapter into the float base with `sqsd-fast merge-adapter --model BASE --adapter OUT "
                "--out DIR`, as QLoRA users do"))
        if self.online_drop and not self.online_score:
            raise OptionError("online_drop", "online_drop needs --online-score: the scores that decide "
                                             "what is left out")

    def online_drop_settings(self) -> tuple[float, int] | None:
        """(top fraction, after epochs) of --online-drop, or None."""
        if not self.online_drop:
            return None
        pairs = dict(item.split("=", 1) for item in self.online_drop)
        return float(pairs["top"]), int(pairs["after"])

    def _check_monitor(self) -> None:
        monitored = self.monitor_directions()
        unknown = [n for n in self.monitor_thresholds() if n not in monitored]
        if unknown:
            listed = ", ".join(monitored) or "none: give --monitor-direction NAME=DIR"
            raise OptionError("monitor_threshold", f"monitor_threshold {unknown[0]}: not a "
                                                   f"monitored direction (monitored: {listed})")
        if self.monitor_action == "stop" and not self.monitor_thresholds():
            raise OptionError("monitor_action", "monitor_action stop needs --monitor-threshold "
                                                "NAME=VALUE: the projection that stops training")

    def online_directions(self) -> dict[str, str]:
        """{name: adapter directory} of --online-score, in the given order."""
        return dict(item.split("=", 1) for item in self.online_score)

    def monitor_directions(self) -> dict[str, str]:
        """{name: direction adapter directory} of --monitor-direction."""
        return dict(item.split("=", 1) for item in self.monitor_direction)

    def monitor_thresholds(self) -> dict[str, float]:
        """{name: threshold} of --monitor-threshold."""
        return {k: float(v) for k, v in (item.split("=", 1) for item in self.monitor_threshold)}

    def lora_settings(self, init_config: dict | None = None) -> dict:
        """r, lora_alpha, lora_dropout, target_modules: given > init adapter's > defaults.

        A value given here that differs from the init adapter's raises OptionError: the
        adapter being continued fixes its own shape.
        """
        settings = dict(LORA_DEFAULTS)
        for name in settings:
            given = getattr(self, name)
            if init_config is not None and name in init_config:
                inherited = _normalize_target(init_config[name]) if name == "target_modules" \
                    else init_config[name]
                mine = _normalize_target(given) if name == "target_modules" else given
                if given is not None and name != "lora_dropout" and mine != inherited:
                    raise OptionError(name, f"{name} {given!r} differs from the init adapter's "
                                            f"{inherited!r}; leave {name} unset to continue it")
                settings[name] = inherited if given is None else given
            elif given is not None:
                settings[name] = given
        return settings


def _normalize_target(value) -> str:
    """Module names in a fixed order, so that "v_proj,q_proj" equals ["q_proj", "v_proj"]."""
    if isinstance(value, (list, tuple, set)):
        return ",".join(sorted(value))
    return ",".join(sorted(str(value).split(","))) if value != "all-linear" else value


def _same_path(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


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
    HELP: ClassVar[str] = "write a base model with a LoRA adapter merged into its weights"
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
