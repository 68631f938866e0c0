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
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

from sqsd_fast.choices import (BACKENDS, DTYPE_NAMES, METRICS, check_choice, check_device,
                               check_finite_float, check_positive_int)


class OptionError(ValueError):
    """A bad option value; ``option`` is the dataclass field name."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def _opt(help: str, metavar: str | None = None, **kwargs) -> Any:
    metadata = {"help": help, **({"metavar": metavar} if metavar else {}), **kwargs}
    return metadata


def _required(help: str, metavar: str | None = None) -> Any:
    return field(metadata=_opt(help, metavar))


def _default(value, help: str, metavar: str | None = None, **kwargs) -> Any:
    return field(default=value, metadata=_opt(help, metavar, **kwargs))


class _Checked:
    """Runs ``CHECKS`` ({field: check(name, value) -> value}) when the dataclass is built."""

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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _optional_positive(name, value):
    return check_positive_int(name, value, optional=True)


@dataclass(kw_only=True)
class RunOptions(_Checked):
    """Options shared by every command that runs the model over a data file."""

    data: str = _required("samples to score: .json, .jsonl, .csv, .parquet, a datasets "
                          "save_to_disk directory, or a hub dataset name", "FILE")
    out: str = _required("output table; the format follows the extension: .jsonl, .csv, "
                         ".parquet", "FILE")
    metric: str = _default("cosine", "cosine (the paper's choice), dot = sum <dW, D>, "
                           "projection = sum <dW, D>/||D|| (both unnormalized: biased by "
                           "response length)", choices=METRICS)
    batch_size: int = _default(8, "samples per forward/backward pass (does not change the "
                               "scores)", "N")
    max_length: int = _default(1024, "tokens kept per sample (prompt + response); longer "
                               "ones are cut", "N")
    dtype: str = _default("float32", "model weights dtype (bfloat16 is the usual choice on "
                          "a GPU)", choices=DTYPE_NAMES)
    device: str = _default("cpu", "cpu, cuda or cuda:N")
    backend: str = _default("auto", "statistics kernel backend (auto picks the fastest "
                            "available)", choices=BACKENDS)
    limit: Optional[int] = _default(None, "score only the first N records", "N")
    resume: bool = _default(False, "continue an interrupted run of the same command from "
                            "the sidecar files beside --out")
    tokenizer: Optional[str] = _default(None, "tokenizer directory (default: --model)", "DIR")
    data_split: Optional[str] = _default(None, "split of a datasets directory or hub "
                                         "dataset (default: train)", "SPLIT")
    no_progress: bool = _default(False, "no progress bar")
    quiet: bool = _default(False, "no progress bar and no summary")
    instruction_field: str = _default("instruction", "field with the instruction", "NAME")
    context_field: Optional[str] = _default(None, "field with the optional context "
                                            "(default: context, else input)", "NAME")
    response_field: Optional[str] = _default(None, "field with the response (default: "
                                             "response, else output)", "NAME")
    messages_field: str = _default("messages", "field with the chat turns", "NAME")
    input_ids_field: str = _default("input_ids", "field with pre-tokenized ids", "NAME")
    labels_field: str = _default("labels", "field with pre-tokenized labels (-100 = not "
                                 "trained on)", "NAME")

    COMMAND: ClassVar[str] = ""
    # Fields that cannot change a score (batching, placement, presentation, where the
    # output goes): left out of the resume fingerprint. Everything else is in it.
    NOT_FINGERPRINTED: ClassVar[frozenset] = frozenset(
        {"out", "batch_size", "device", "backend", "resume", "no_progress", "quiet"})
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
        "max_length": check_positive_int,
        "limit": _optional_positive,
    }

    @property
    def progress(self) -> bool:
        return not (self.quiet or self.no_progress)

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

    def adapters(self) -> dict[str, str]:
        """{field name: adapter directory} of the adapters given."""
        return {name: getattr(self, name) for name in self.ADAPTER_FIELDS
                if getattr(self, name) is not None}


@dataclass(kw_only=True)
class _ScoreInputs:
    model: str = _required("base model (directory or hub id) the adapters were trained on",
                           "DIR")
    danger_state: str = _required("LoRA adapter directory: the state danger projections are "
                                  "taken at (e.g. a LoRA fine-tuned on benign data)", "DIR")
    danger_direction: str = _required("LoRA adapter directory trained on unsafe data; its "
                                      "B A is the danger direction", "DIR")
    safety_direction: str = _required("LoRA adapter directory trained on safe responses; its "
                                      "B A is the safety direction", "DIR")
    safety_state: Optional[str] = _default(None, "LoRA adapter directory for the safety "
                                           "state (default: the safety direction adapter "
                                           "itself, as in the paper)", "DIR")
    safety_state_scaling: float = _default(1.0, "LoRA scaling used for the safety state",
                                           "S")


@dataclass(kw_only=True)
class ScoreOptions(RunOptions, _ScoreInputs):
    """``sqsd-fast score``: sqsd = danger projection - safety projection per sample."""

    COMMAND: ClassVar[str] = "score"
    ADAPTER_FIELDS: ClassVar[tuple] = ("danger_state", "danger_direction", "safety_direction",
                                       "safety_state")
    SCORE_COLUMN: ClassVar[str] = "sqsd"
    CHECKS: ClassVar[dict] = {"safety_state_scaling": check_finite_float}


@dataclass(kw_only=True)
class _ProjectInputs:
    model: str = _required("base model (directory or hub id)", "DIR")
    state: str = _required("LoRA adapter directory: the state the update is computed at",
                           "DIR")
    direction: str = _required("LoRA adapter directory whose B A is the direction", "DIR")


@dataclass(kw_only=True)
class ProjectOptions(RunOptions, _ProjectInputs):
    """``sqsd-fast project``: one projection per sample on one direction at one state."""

    COMMAND: ClassVar[str] = "project"
    ADAPTER_FIELDS: ClassVar[tuple] = ("state", "direction")
    SCORE_COLUMN: ClassVar[str] = "proj"


@dataclass(kw_only=True)
class SubsetsOptions(_Checked):
    """``sqsd-fast subsets``: the ranking cut into windows S1 (riskiest) .. S<num>."""

    scores: str = _required("output of 'sqsd-fast score' or 'project' (.jsonl/.csv/.parquet)",
                            "FILE")
    data: str = _required("the data file that was scored (record i = scores row index i)",
                          "FILE")
    out_dir: str = _required("directory for S1..S<num>, subsets.png and subsets.json "
                             "(created if missing)", "DIR")
    num: int = _default(5, "number of windows", "N")
    window: Optional[int] = _default(None, "samples per window (default: scored samples // "
                                     "num)", "W")
    column: Optional[str] = _default(None, "score column to sort by (default: sqsd, or proj "
                                     "for 'project' output)", "NAME")
    data_split: Optional[str] = _default(None, "split of a datasets directory or hub dataset",
                                         "SPLIT")

    COMMAND: ClassVar[str] = "subsets"
    CHECKS: ClassVar[dict] = {"num": check_positive_int, "window": _optional_positive}
