"""Every `sqsd-fast` command in one table: the options it takes, the function that runs it
(the one Python users call too) and the function that sums its result up.

    from sqsd_fast.app.commands import run_command
    result = run_command("filter", scores="scores.jsonl", data="train.jsonl",
                         out="kept.jsonl", drop_top="0.1")

A new command is an options dataclass (its COMMAND, HELP and DESCRIPTION; the CLI's parser
is built from its fields), a function taking those options, a ``format_summary(result)``,
and one line in COMMANDS. The functions are named as "module:function" and imported when
the command runs, so that ``sqsd-fast --help`` does not load torch or transformers.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from sqsd_fast.options.evaluate import EvaluateOptions
from sqsd_fast.options import (AnchorDirectionOptions, BaselineOptions, FetchModelOptions, FilterOptions,
                               ProjectOptions, ScoreOptions, SubsetsOptions)
from sqsd_fast.options.train_adapter import MergeAdapterOptions, TrainAdapterOptions


@dataclass(frozen=True)
class Command:
    options: type     # the options dataclass; its COMMAND is the command's name
    run: str          # "module:function" called with the options; returns the result
    summary: str      # "module:function" giving the result's summary lines (str)

    @property
    def name(self) -> str:
        return self.options.COMMAND

    def runner(self) -> Callable[[Any], Any]:
        return _load(self.run)

    def summarizer(self) -> Callable[[Any], str]:
        return _load(self.summary)


def _load(target: str) -> Callable:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


_SCORING = ("sqsd_fast.app.pipeline:run", "sqsd_fast.app.pipeline:format_summary")

COMMANDS: dict[str, Command] = {command.name: command for command in (
    Command(ScoreOptions, *_SCORING),
    Command(ProjectOptions, *_SCORING),
    Command(BaselineOptions, *_SCORING),
    Command(AnchorDirectionOptions, "sqsd_fast.influence.anchor_direction:anchor_direction",
            "sqsd_fast.influence.anchor_direction:format_summary"),
    Command(SubsetsOptions, "sqsd_fast.app.subsets:run_subsets", "sqsd_fast.app.subsets:format_summary"),
    Command(FilterOptions, "sqsd_fast.app.filtering:run_filter", "sqsd_fast.app.filtering:format_summary"),
    Command(TrainAdapterOptions, "sqsd_fast.training:train_adapter", "sqsd_fast.training:format_summary"),
    Command(MergeAdapterOptions, "sqsd_fast.training.merge:merge_adapter",
            "sqsd_fast.training.merge:format_summary"),
    Command(EvaluateOptions, "sqsd_fast.evaluation:evaluate", "sqsd_fast.evaluation:format_summary"),
    Command(FetchModelOptions, "sqsd_fast.models.names:fetch_model", "sqsd_fast.models.names:format_summary"),
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
        options = entry.options(**kwargs)
    else:
        if kwargs:
            raise TypeError("give either an options object or a command name with keyword options")
        options = name_or_options
        entry = command(options.COMMAND)
    return entry.runner()(options)
