"""The options of ``baseline`` (the paper's baselines) and ``anchor-direction``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from sqsd_fast.choices import (BACKENDS, METRICS, check_choice, check_positive_int)
from sqsd_fast.options.base import OptionError, option, required_option
from sqsd_fast.options.groups import DeviceOptions, ModelOptions, QuantizedBaseOptions, RecordFieldOptions, RunOptions

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
class BaselineOptions(_BaselineInputs, RunOptions):
    """``sqsd-fast baseline``: one baseline score per sample (the methods: sqsd_fast/influence/baselines.py)."""

    COMMAND: ClassVar[str] = "baseline"
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
class AnchorDirectionOptions(QuantizedBaseOptions, RecordFieldOptions, DeviceOptions, ModelOptions):
    """``sqsd-fast anchor-direction``: a danger (or safety) direction from anchor samples
    (sqsd_fast/influence/anchor_direction.py)."""

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
    backend: str = option("auto", "statistics kernel backend", choices=BACKENDS)
    quiet: bool = option(False, "no progress bar and no summary")

    COMMAND: ClassVar[str] = "anchor-direction"
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
    }
