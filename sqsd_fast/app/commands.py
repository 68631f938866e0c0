"""Every `sqsd-fast` command in one table: its name and one-line help, the options it takes,
the function that runs it (the one Python users call too) and the function that sums its
result up.

    from sqsd_fast.app.commands import run_command
    result = run_command("filter", scores="scores.jsonl", data="train.jsonl",
                         out="kept.jsonl", drop_top="0.1")

A new command is an options dataclass (its COMMAND and DESCRIPTION; the CLI's parser is
built from its fields), a function taking those options, a ``format_summary(result)``,
and one line in COMMANDS. Everything is named as "module:name" and imported when the
command runs or its parser is built, so that a command loads only its own options (``sqsd-fast
score`` does not load train-adapter's, which are transformers' TrainingArguments).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Command:
    name: str
    help: str         # one line in ``sqsd-fast --help``
    options: str      # "module:Class": the options dataclass; its COMMAND is the name
    run: str          # "module:function" called with the options; returns the result
    summary: str      # "module:function" giving the result's summary lines (str)

    def options_class(self) -> type:
        return _load(self.options)

    def runner(self) -> Callable[[Any], Any]:
        return _load(self.run)

    def summarizer(self) -> Callable[[Any], str]:
        return _load(self.summary)


def _load(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


_OPTIONS = "sqsd_fast.options"
_SCORING = ("sqsd_fast.app.pipeline:run", "sqsd_fast.app.pipeline:format_summary")

COMMANDS: dict[str, Command] = {command.name: command for command in (
    Command("score", "score every sample: sqsd = danger projection - safety projection",
            f"{_OPTIONS}:ScoreOptions", *_SCORING),
    Command("project", "project every sample's induced update on one direction at one state",
            f"{_OPTIONS}:ProjectOptions", *_SCORING),
    Command("baseline", "score every sample with a baseline: length, random, self-inf, self-inf-n, gradmatch",
            f"{_OPTIONS}:BaselineOptions", *_SCORING),
    Command("anchor-direction", "a direction from anchor samples: their mean induced update at a state",
            f"{_OPTIONS}:AnchorDirectionOptions", "sqsd_fast.influence.anchor_direction:anchor_direction",
            "sqsd_fast.influence.anchor_direction:format_summary"),
    Command("subsets", "cut the score ranking into windows S1 (riskiest) .. S5 and plot it",
            f"{_OPTIONS}:SubsetsOptions", "sqsd_fast.app.subsets:run_subsets",
            "sqsd_fast.app.subsets:format_summary"),
    Command("filter", "write the data without its riskiest samples (or with 0/1 weights)",
            f"{_OPTIONS}:FilterOptions", "sqsd_fast.app.filtering:run_filter",
            "sqsd_fast.app.filtering:format_summary"),
    Command("train-adapter", "train a LoRA adapter (a direction, a state, or a fine-tune of a subset)",
            "sqsd_fast.options.train_adapter:TrainAdapterOptions", "sqsd_fast.training:train_adapter",
            "sqsd_fast.training:format_summary"),
    Command("merge-adapter", "write a base model with a LoRA adapter merged into its weights",
            f"{_OPTIONS}:MergeAdapterOptions", "sqsd_fast.training.merge:merge_adapter",
            "sqsd_fast.training.merge:format_summary"),
    Command("evaluate", "attack success rate of a model (+ adapter) on harmful prompts",
            f"{_OPTIONS}:EvaluateOptions", "sqsd_fast.evaluation:evaluate",
            "sqsd_fast.evaluation:format_summary"),
    Command("fetch-model", "fetch a real model by name into the cache and print its path",
            f"{_OPTIONS}:FetchModelOptions", "sqsd_fast.models.names:fetch_model",
            "sqsd_fast.models.names:format_summary"),
)}


def command(name: str) -> Command:
    """The command called ``name``; an unknown name is an error listing the known ones."""
    if name not in COMMANDS:
        raise ValueError(f"unknown command {name!r}; known: {', '.join(COMMANDS)}")
    return COMMANDS[name]


def run_command(name_or_options, /, **kwargs):
    """Run a command as the CLI does, without printing: ``run_command("score", model=...)``
    or ``run_command(ScoreOptions(...))``. Returns the command's result."""
    if isinstance(name_or_options, str):
        entry = command(name_or_options)
        options = entry.options_class().from_keywords(**kwargs)
    else:
        if kwargs:
            raise TypeError("give either an options object or a command name with keyword options")
        options = name_or_options
        entry = command(options.COMMAND)
    return entry.runner()(options)
