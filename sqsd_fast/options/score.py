"""The options of ``score`` and ``project``."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import ClassVar, Optional

from sqsd_fast.anchors import DEFAULTS, DESCRIPTIONS
from sqsd_fast.choices import check_finite_float
from sqsd_fast.io.writers import PROJECT_COLUMNS, SCORE_COLUMNS
from sqsd_fast.models.fresh_state import DESCRIPTION
from sqsd_fast.options.base import OptionError, check_named_directions, option, optional_positive
from sqsd_fast.options.groups import RunOptions


@dataclass(kw_only=True)
class _ScoreInputs:
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
class ScoreOptions(_ScoreInputs, RunOptions):
    """``sqsd-fast score``: sqsd = danger projection - safety projection per sample."""

    COMMAND: ClassVar[str] = "score"
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
                              "anchor_response_tokens": optional_positive}

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
        return {side: getattr(self, f"{side}_anchors") or os.fspath(DEFAULTS[side])
                for side in ("danger", "safety") if getattr(self, f"{side}_direction") is None}

    def sources(self) -> dict[str, str]:
        """What each input of the score is, in words (the summary and OUT.meta.json)."""
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
        columns = {}
        for name, kind in SCORE_COLUMNS.items():
            columns[name] = kind
            if name == "sqsd":     # one pair per further danger direction, after the main one
                for extra in self.more_danger_directions():
                    columns[f"danger_proj_{extra}"] = columns[f"sqsd_{extra}"] = "float"
        return columns


@dataclass(kw_only=True)
class _ProjectInputs:
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
class ProjectOptions(_ProjectInputs, RunOptions):
    """``sqsd-fast project``: one projection per sample on one direction at one state."""

    COMMAND: ClassVar[str] = "project"
    DESCRIPTION: ClassVar[str] = (
        "Project each sample's induced LoRA update on one direction (--direction) at one "
        "state (--state). Output rows, in input order: index, proj, n_tokens, "
        "n_response_tokens, status.")
    ADAPTER_FIELDS: ClassVar[tuple] = ("state", "direction")
    PATH_FIELDS: ClassVar[tuple] = ("model", "tokenizer", "anchors")
    SCORE_COLUMN: ClassVar[str] = "proj"
    CHECKS: ClassVar[dict] = {"anchor_response_tokens": optional_positive}

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
        return {"state": self.state or DESCRIPTION,
                "direction": f"adapter {self.direction}" if self.direction else
                f"mean update of the anchors {self.anchors} at the state"}

    def columns(self) -> dict[str, str]:
        return dict(PROJECT_COLUMNS)


