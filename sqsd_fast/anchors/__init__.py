"""The anchor sets shipped with the package: what ``sqsd-fast score`` builds its danger and
safety directions from when no direction and no anchor file is given (zero-configuration
scoring). Data only; where each set comes from and its license: ``SOURCES.md`` beside.

- ``DEFAULT_DANGER_ANCHORS``: AdvBench harmful behaviours 0..99 (Zou et al. 2023, MIT),
  each prompt with its affirmative target ("Sure, here is ...") as the response.
- ``DEFAULT_SAFETY_ANCHORS``: the same 100 prompts, each with a refusal written for this
  project (ten styles, in turn).
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DANGER_ANCHORS = HERE / "danger_advbench_100.jsonl"
DEFAULT_SAFETY_ANCHORS = HERE / "safety_refusals_100.jsonl"
DEFAULTS = {"danger": DEFAULT_DANGER_ANCHORS, "safety": DEFAULT_SAFETY_ANCHORS}
DESCRIPTIONS = {
    "danger": "the shipped danger anchors (AdvBench behaviours 0..99 with their targets, MIT)",
    "safety": "the shipped safety anchors (the same 100 prompts with refusals written for sqsd_fast)",
}
