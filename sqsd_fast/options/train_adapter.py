"""The options of ``train-adapter``: transformers' ``TrainingArguments`` with this project's
fields added, as TRL's ``SFTConfig`` is. One dataclass is the CLI parser, the Python
keywords, the Trainer's arguments and the resume fingerprint.

The options training shares with scoring (the model, the data and how its records are
read, what is printed) are the same groups (``options/groups.py``), so the commands cannot
drift apart in how they load a model or read a data file. This module imports
transformers (about 3 s): the CLI, ``sqsd_fast.options`` and ``sqsd_fast.training`` load it
only when train-adapter is asked for; the value checks live in ``train_checks.py``.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from sqsd_fast.choices import check_choice
from sqsd_fast.models.quiet import quiet_libraries
from sqsd_fast.options.base import OptionError, check_named_directions, option, required_option
from sqsd_fast.options.groups import DataOptions, ModelOptions, ProgressOptions, QuantizedBaseOptions
from sqsd_fast.options.train_checks import (
    CHECKPOINTS, LORA_DEFAULTS, MONITOR_ACTIONS, SCHEDULERS, check_monitor_threshold, check_one_process,
    check_online_drop, check_seed, check_target_modules, check_train_device, check_warmup, number, positive,
)

with quiet_libraries():   # bitsandbytes, imported with it where installed, announces optional kernels
    from transformers import TrainingArguments  # noqa: TID253 (subclassed here; this module is loaded lazily)

# The TrainingArguments fields the CLI offers (with this project's own): the others are
# for Python callers, who may give any of them, as to TRL's SFTConfig.
CLI_TRAINING_ARGUMENTS = frozenset({
    "learning_rate", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
    "warmup_steps", "lr_scheduler_type", "weight_decay", "seed", "save_steps", "save_total_limit",
    "logging_steps", "activation_checkpointing"})
TRAINING_ARGUMENT_NAMES = frozenset(f.name for f in dataclasses.fields(TrainingArguments))


@dataclass(kw_only=True)
class TrainAdapterOptions(ProgressOptions, QuantizedBaseOptions, DataOptions, ModelOptions, TrainingArguments):
    """``train-adapter``: LoRA supervised fine-tuning, loss on response tokens only.

    These are transformers' ``TrainingArguments`` (handed to the Trainer as they are) plus
    the model, the data, the LoRA, the run directory, monitoring and online scoring. Where
    train-adapter changes a TrainingArguments default the field is redeclared below and
    says so. Set from the other options, whatever is given: ``output_dir`` (OUT/checkpoints),
    ``bf16`` / ``fp16`` (from ``dtype``), ``save_strategy`` / ``logging_strategy`` (per
    epoch unless ``save_steps`` / ``logging_steps``) and ``disable_tqdm`` (from the progress
    options, unless given). Keywords kept from before (``ALIASES``): ``num_epochs``,
    ``batch_size``, ``warmup_ratio``, ``gradient_checkpointing`` and ``device`` (cpu or
    cuda, which sets ``use_cpu``); build from them with ``TrainAdapterOptions.from_keywords``.
    """

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
    keep_checkpoints: bool = option(False, "keep OUT/checkpoints after training finishes")
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

    # --- TrainingArguments fields whose default (or type) train-adapter changes
    learning_rate: float = option(1e-4, "peak learning rate (default: 1e-4; transformers': 5e-5)", "LR")
    num_train_epochs: int = option(3, "passes over the data, whole ones (the losses and online "
                                   "scores are per epoch)", "N")
    per_device_train_batch_size: int = option(4, "samples per forward/backward pass "
                                              "(default: 4; transformers': 8)", "N")
    warmup_steps: float = option(0.03, "learning-rate warm-up: below 1 a fraction of the "
                                 "optimizer steps, else a number of steps (default: 0.03; "
                                 "transformers': 0)", "F")
    lr_scheduler_type: str = option("cosine", "learning rate schedule: " + ", ".join(SCHEDULERS)
                                    + " (default: cosine; transformers': linear)", "NAME", choices=SCHEDULERS)
    save_steps: Optional[int] = option(None, "save a checkpoint every N optimizer steps "
                                       "(default: at the end of every epoch)", "N")
    save_total_limit: Optional[int] = option(2, "checkpoints kept in OUT/checkpoints, the "
                                             "newest (default: 2; transformers': all)", "N")
    logging_steps: Optional[int] = option(None, "log the training loss every N optimizer "
                                          "steps (default: once per epoch)", "N")
    activation_checkpointing: bool = option(False, "recompute activations in the backward "
                                            "pass: less memory, slower")
    # Non-reentrant checkpointing needs no input that requires grad (the frozen embeddings
    # of a LoRA model have none).
    activation_checkpointing_kwargs: Optional[dict] = dataclasses.field(
        default_factory=lambda: {"use_reentrant": False})
    # The CPU unless asked (the CLI's --device cuda), as every other command; transformers
    # picks the GPU where there is one.
    use_cpu: bool = option(True, "train on the CPU (False: the first visible GPU)")
    # The samples are TokenizedSample objects, not model keyword columns.
    remove_unused_columns: bool = False
    label_names: Optional[list[str]] = dataclasses.field(default_factory=lambda: ["labels"])

    COMMAND: ClassVar[str] = "train-adapter"
    DESCRIPTION: ClassVar[str] = (
        "LoRA supervised fine-tuning with peft and transformers' Trainer, loss on the "
        "response tokens only, on the same readers and tokenization as 'score'. --out "
        "becomes a peft adapter directory that 'score' and 'project' accept; --merge-to also "
        "writes the merged full model. Checkpoints in OUT/checkpoints; continue an "
        "interrupted run with --resume. The options are transformers' TrainingArguments "
        "with this project's added; from Python every TrainingArguments field can be given.")
    EPILOG: ClassVar[str] = (
        "Examples (the three adapters SQSD needs):\n"
        "  sqsd-fast train-adapter --model BASE --data unsafe.jsonl --out lora_unsafe\n"
        "  sqsd-fast train-adapter --model BASE --data refusals.jsonl --out lora_safe\n"
        "  sqsd-fast train-adapter --model BASE --data benign.jsonl --out lora_initial")
    # The TrainingArguments fields the CLI offers are listed in a group of their own.
    CLI_GROUP: ClassVar[tuple] = (
        "training (transformers' TrainingArguments)",
        "The TrainingArguments train-adapter offers on the command line; from Python every "
        "TrainingArguments field can be given (sqsd_fast.training.train_adapter).",
        CLI_TRAINING_ARGUMENTS)
    # The TrainingArguments fields the CLI leaves out (see CLI_TRAINING_ARGUMENTS).
    CLI_HIDDEN: ClassVar[frozenset] = TRAINING_ARGUMENT_NAMES - CLI_TRAINING_ARGUMENTS
    # A CLI option that is no field: --device sets use_cpu (TrainingArguments' ``device``
    # is a property).
    CLI_EXTRA: ClassVar[dict] = {"device": dict(default="cpu", metavar="DEVICE", help=(
        "cpu or cuda (the first visible GPU; choose it with CUDA_VISIBLE_DEVICES)"))}
    # Earlier names of fields that are now TrainingArguments', still taken as keywords and
    # as CLI options (--num-epochs, --batch-size, --warmup-ratio, --gradient-checkpointing).
    ALIASES: ClassVar[dict] = {"num_epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
                               "warmup_ratio": "warmup_steps", "gradient_checkpointing": "activation_checkpointing"}
    # Options that cannot change the trained adapter: left out of the resume fingerprint.
    # The monitor only watches, so a resume may add, drop or change it; except that with
    # --monitor-action stop its threshold decides where training ends: train.py then adds
    # that stop rule to the fingerprint ("monitor_stop"), so a resume must keep it.
    NOT_FINGERPRINTED: ClassVar[frozenset] = frozenset(
        {"out", "resume", "overwrite", "merge_to", "save_steps", "save_total_limit",
         "keep_checkpoints", "logging_steps", "activation_checkpointing", "use_cpu",
         "no_progress", "quiet", "monitor_direction", "monitor_steps", "monitor_threshold",
         "online_score", "monitor_action"})
    # The fingerprint keeps the names these fields had before they were TrainingArguments',
    # so that a run started then still resumes.
    FINGERPRINT_NAMES: ClassVar[dict] = {value: key for key, value in ALIASES.items()}
    # Fingerprinted by content, not by their text.
    PATH_FIELDS: ClassVar[tuple] = ("model", "tokenizer", "init_adapter")
    CHECKS: ClassVar[dict] = {
        "r": lambda n, v: positive(n, v, optional=True),
        "lora_alpha": number(0.0, low_open=True, optional=True),
        "lora_dropout": number(0.0, 1.0, optional=True),
        "target_modules": check_target_modules,
        "learning_rate": number(0.0, low_open=True),
        "num_train_epochs": positive,
        "per_device_train_batch_size": positive,
        "gradient_accumulation_steps": positive,
        "warmup_steps": check_warmup,
        "lr_scheduler_type": lambda n, v: check_choice(n, v, SCHEDULERS),
        "weight_decay": number(0.0),
        "seed": check_seed,
        "save_steps": lambda n, v: positive(n, v, optional=True),
        "save_total_limit": lambda n, v: positive(n, v, optional=True),
        "logging_steps": lambda n, v: positive(n, v, optional=True),
        "monitor_direction": check_named_directions,
        "online_score": check_named_directions,
        "online_drop": check_online_drop,
        "monitor_steps": positive,
        "monitor_threshold": check_monitor_threshold,
        "monitor_action": lambda n, v: check_choice(n, v, MONITOR_ACTIONS),
    }

    @classmethod
    def from_keywords(cls, **keywords: Any) -> "TrainAdapterOptions":
        """The options from keywords that may use the earlier names (``ALIASES``) and
        ``device`` (cpu or cuda) for ``use_cpu``."""
        if "device" in keywords:
            if "use_cpu" in keywords:
                raise OptionError("device", "device and use_cpu choose the same thing; give one of them")
            try:
                device = check_train_device("device", keywords.pop("device"))
            except ValueError as exc:
                raise OptionError("device", str(exc)) from None
            keywords["use_cpu"] = device == "cpu"
        return super().from_keywords(**keywords)

    def __post_init__(self) -> None:
        self._given_training_arguments = self._changed_training_arguments()
        super().__post_init__()
        for name in ("model", "data", "out"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise OptionError(name, f"{name} must be a non-empty path or name")
        if self.resume and self.overwrite:
            raise OptionError("overwrite", "resume continues the run in --out and overwrite "
                                           "starts it over; give one of them")
        if self.dtype == "float16" and self.use_cpu:
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

        self._set_training_arguments()

    @property
    def train_device(self) -> str:
        """"cpu" or "cuda" (the first visible GPU): where the model is loaded and trained."""
        return "cpu" if self.use_cpu else "cuda"

    def _set_training_arguments(self) -> None:
        """The TrainingArguments fields that follow the other options, then
        TrainingArguments' own checks (a failure is an OptionError like ours)."""
        self.output_dir = str(Path(self.out) / CHECKPOINTS)
        self.bf16, self.fp16 = self.dtype == "bfloat16", self.dtype == "float16"
        self.save_strategy = "steps" if self.save_steps else "epoch"
        self.logging_strategy = "steps" if self.logging_steps else "epoch"
        if self.disable_tqdm is None:
            self.disable_tqdm = not self.progress
        try:   # before TrainingArguments, which would set up the launch's process group
            check_one_process()
        except ValueError as exc:
            raise OptionError("launch", str(exc)) from None
        try:
            TrainingArguments.__post_init__(self)
        except ValueError as exc:
            raise OptionError("training_arguments", f"transformers' TrainingArguments: {exc}") from None

    def _changed_training_arguments(self) -> dict:
        """The TrainingArguments fields this project does not name that a caller set to
        other than their default: part of the fingerprint (they may change the adapter)."""
        defaults = {f.name: f for f in dataclasses.fields(type(self))}
        changed = {}
        for name in sorted(self.CLI_HIDDEN - {"use_cpu"}):
            f = defaults[name]
            if not f.init:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if getattr(self, name) != default:
                changed[name] = _plain(getattr(self, name))
        return changed

    def fingerprinted_fields(self) -> list[tuple[str, str]]:
        """(field, fingerprint key): this project's options and the TrainingArguments the CLI
        offers, under their earlier names; the other TrainingArguments count when set
        (``_changed_training_arguments``)."""
        return [(f.name, self.FINGERPRINT_NAMES.get(f.name, f.name)) for f in dataclasses.fields(self)
                if f.name not in self.NOT_FINGERPRINTED and f.name not in self.CLI_HIDDEN]

    def fingerprint(self, **kwargs) -> dict:
        fp = super().fingerprint(**kwargs)
        fp["lr_scheduler_type"] = _plain(fp["lr_scheduler_type"])
        fp.update({name: value for name, value in self._given_training_arguments.items()
                   if name not in self.NOT_FINGERPRINTED})
        return fp

    def to_dict(self) -> dict:
        """Every field, enums as their values (TrainingArguments' own ``to_dict``)."""
        return TrainingArguments.to_dict(self)

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


def _plain(value):
    """A JSON value: enums as their values, containers item by item, the rest as text."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
