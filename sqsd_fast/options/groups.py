"""Option groups shared by the commands, each field declared once: the model and where it
runs (``ModelOptions``, ``DeviceOptions``), the data and how its records are read
(``DataOptions``, ``RecordFieldOptions``), what is printed (``ProgressOptions``), 4 / 8-bit
bases (``QuantizedBaseOptions``), and what every resumable run takes (``RunOptions``). A
command redeclares a field only where it changes its meaning or default, and says so."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from sqsd_fast.choices import BACKENDS, DTYPE_NAMES, METRICS, check_choice, check_device, check_positive_int
from sqsd_fast.data.records import FieldNames
from sqsd_fast.options.base import CheckedOptions, OptionError, option, optional_positive, required_option


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
        default = FieldNames()
        return FieldNames(
            instruction=self.instruction_field,
            context=(self.context_field,) if self.context_field else default.context,
            response=(self.response_field,) if self.response_field else default.response,
            messages=self.messages_field, input_ids=self.input_ids_field,
            labels=self.labels_field)


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
class ModelOptions(CheckedOptions):
    """The model a command loads: the base, its tokenizer, the weights' dtype."""

    model: str = required_option("base model: a directory, a hub id, a .gguf file, or smollm2 / "
                                 "gemma3-270m (adapters given must have been trained on it)", "DIR")
    tokenizer: Optional[str] = option(None, "tokenizer directory (default: --model)", "DIR")
    dtype: str = option("float32", "model weights dtype (bfloat16 is the usual choice on "
                        "a GPU)", choices=DTYPE_NAMES)
    CHECKS: ClassVar[dict] = {"dtype": lambda n, v: check_choice(n, v, DTYPE_NAMES)}


@dataclass(kw_only=True)
class DeviceOptions(CheckedOptions):
    """Where the model runs. Its own group because train-adapter's options are
    transformers' TrainingArguments, whose ``device`` is a property (the CLI's --device
    sets their ``use_cpu`` there)."""

    device: str = option("cpu", "cpu, cuda or cuda:N")
    CHECKS: ClassVar[dict] = {"device": check_device}


@dataclass(kw_only=True)
class DataOptions(RecordFieldOptions):
    """The data file a command reads, and how much of each record it keeps."""

    data: str = required_option("the samples: .json, .jsonl, .csv, .parquet, a datasets "
                                "save_to_disk directory, or a hub dataset name", "FILE")
    data_split: Optional[str] = option(None, "split of a datasets directory or hub "
                                       "dataset (default: train)", "SPLIT")
    limit: Optional[int] = option(None, "use only the first N records", "N")
    max_length: int = option(1024, "tokens kept per sample (prompt + response); longer "
                             "ones are cut", "N")
    CHECKS: ClassVar[dict] = {"max_length": check_positive_int, "limit": optional_positive}


@dataclass(kw_only=True)
class ProgressOptions(CheckedOptions):
    """What a long command prints while it works."""

    no_progress: bool = option(False, "no progress bar")
    quiet: bool = option(False, "no progress bar and no summary")

    @property
    def progress(self) -> bool:
        return not (self.quiet or self.no_progress)


@dataclass(kw_only=True)
class RunOptions(ProgressOptions, QuantizedBaseOptions, DataOptions, DeviceOptions, ModelOptions):
    """Options shared by every command that runs the model over a data file."""

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
    backend: str = option("auto", "statistics kernel backend (auto picks the fastest "
                          "available)", choices=BACKENDS)
    resume: bool = option(False, "continue an interrupted run of the same command from "
                          "the sidecar files beside --out")
    gradient_checkpointing: bool = option(False, "recompute each layer's forward in the backward: "
                                          "less memory for long samples, about a third more "
                                          "time; scores do not change")
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
        "backend": lambda n, v: check_choice(n, v, BACKENDS),
        "batch_size": check_positive_int,
        "max_tokens": optional_positive,
    }

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


