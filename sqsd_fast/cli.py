"""The `sqsd-fast` command line: score, project, baseline, anchor-direction, subsets,
filter, train-adapter, merge-adapter, evaluate, fetch-model.

    sqsd-fast score --model BASE --danger-state A0 --danger-direction AD \\
                    --safety-direction AS --data train.jsonl --out scores.jsonl

Argument parsing and printing only: each command's options are a dataclass (registered in
_OPTIONS; the parser is built from it) and the work is done by a module Python users call
too (pipeline, subsets, training, training.merge, evaluation, influence.anchor_direction).
Every error prints one line to stderr with a non-zero exit code (the README lists them).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
from typing import Sequence

from sqsd_fast.evaluation.options import EvaluateOptions
from sqsd_fast.options import (AnchorDirectionOptions, BaselineOptions, FetchModelOptions, FilterOptions,
                               OptionError, ProjectOptions, RecordFieldOptions, ScoreOptions,
                               SubsetsOptions)
from sqsd_fast.training.options import MergeAdapterOptions, TrainAdapterOptions

PROG = "sqsd-fast"
RECORD_FIELDS = {f.name for f in dataclasses.fields(RecordFieldOptions)}
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
_OPTIONS = {"score": ScoreOptions, "project": ProjectOptions, "subsets": SubsetsOptions,
            "filter": FilterOptions, "fetch-model": FetchModelOptions,
            "baseline": BaselineOptions, "anchor-direction": AnchorDirectionOptions,
            "train-adapter": TrainAdapterOptions, "merge-adapter": MergeAdapterOptions,
            "evaluate": EvaluateOptions}
FIELD_NAMES_NOTE = (
    "Records are instruction form (instruction, optional context/input, response/output), "
    "chat form (messages; the last assistant turn is the response) or pre-tokenized "
    "(input_ids + labels); these options rename the fields.")


class _Formatter(argparse.HelpFormatter):
    """Wraps each paragraph on its own (keeps indented example lines as written) and
    shows defaults only where they say something."""

    def _fill_text(self, text, width, indent):
        out = []
        for line in text.splitlines():
            if line.startswith("  ") or not line.strip():
                out.append(indent + line)
            else:
                out.append(textwrap.fill(line, width, initial_indent=indent,
                                         subsequent_indent=indent))
        return "\n".join(out)

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default not in (None, False, argparse.SUPPRESS) and "default" not in text
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


def _command_parser_class():
    from transformers import HfArgumentParser

    class CommandParser(HfArgumentParser):
        """HfArgumentParser spelling options the way a shell user types them: only
        ``--batch-size`` (not also ``--batch_size``), and plain on/off flags."""

        def add_argument(self, *names, **kwargs):
            if any(n.lstrip("-") in RECORD_FIELDS for n in names):   # their own group
                return self._record_fields().add_argument(
                    *[n for n in names if "_" not in n.lstrip("-")] or names, **kwargs)
            hyphenated = {n.replace("_", "-") for n in names if n.startswith("--")}
            names = tuple(n for n in names if not (n.startswith("--") and "_" in n
                                                   and n.replace("_", "-") in hyphenated))
            if kwargs.get("nargs") == "?" and kwargs.get("const") is True \
                    and kwargs.get("default") is False:
                for key in ("nargs", "const", "type"):
                    kwargs.pop(key)
                kwargs["action"] = "store_true"
            return super().add_argument(*names, **kwargs)

        def _record_fields(self):
            if not hasattr(self, "_record_group"):
                self._record_group = self.add_argument_group("record fields", FIELD_NAMES_NOTE)
            return self._record_group

    return CommandParser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="SQSD: per-sample safety-degradation risk scores for LLM fine-tuning "
                    "data. Score a data set before fine-tuning on it; higher = riskier.",
        epilog="Try it: python -m sqsd_fast.demo (SmolLM2-135M; --toy: offline, seconds)\n"
               "Run '%(prog)s COMMAND --help' for each command's options.")
    from sqsd_fast import __version__
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_command_parser_class())
    commands = {}
    for name, cls in _OPTIONS.items():
        commands[name] = sub.add_parser(
            name, dataclass_types=cls, formatter_class=_Formatter, help=cls.HELP,
            description=cls.DESCRIPTION, epilog=getattr(cls, "EPILOG", None))
    parser.command_parsers = commands  # for usage errors found after parsing
    return parser


def parse_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None):
    """The command's options dataclass; a bad value is a usage error naming the option."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "fetch-model" and not argv[1].startswith("-"):
        argv.insert(1, "--name")          # sqsd-fast fetch-model NAME
    args = parser.parse_args(argv)
    cls = _OPTIONS[args.command]
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    try:
        return cls(**values)
    except OptionError as exc:
        option = "--" + exc.option.replace("_", "-")
        parser.command_parsers[args.command].error(str(exc).replace(exc.option, option, 1))


class Terminated(BaseException):
    """SIGTERM (a scheduler's or `kill`'s stop): handled like Ctrl-C, with its own code; a
    BaseException like KeyboardInterrupt, so no ``except Exception`` on the way (such as
    the failure exchange between the ranks of a multi-process run) takes it for an error."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sqsd-fast` console script; returns the exit code."""
    parser = build_parser()
    try:
        options = parse_options(parser, argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    commands = {"score": run_scoring, "project": run_scoring, "baseline": run_scoring,
                "subsets": run_subsets, "filter": run_filter,
                **dict.fromkeys(_MODULE_COMMANDS, run_module_command)}
    previous = _install_handlers()
    try:
        return commands[options.COMMAND](options)
    except KeyboardInterrupt:
        _error("interrupted" + _resume_hint(options))
        return EXIT_INTERRUPTED
    except Terminated:
        _error("terminated (SIGTERM)" + _resume_hint(options))
        return EXIT_TERMINATED
    except (ValueError, FileNotFoundError) as exc:
        if not getattr(exc, "reported_elsewhere", False):   # rank 0 of several prints it
            _error(str(exc))
        return EXIT_ERROR
    except Exception as exc:  # anything unexpected still gets one line, not a traceback
        if os.environ.get("SQSD_FAST_DEBUG"):
            raise
        _error(f"{type(exc).__name__}: {exc}{_resume_hint(options)} (set SQSD_FAST_DEBUG=1 "
               f"to see the traceback)")
        return EXIT_ERROR
    finally:
        _restore_handlers(previous)


def _install_handlers():
    """SIGTERM raises Terminated (signals can only be set from the main thread); warnings
    print as one line without a source line. Returns what to restore."""
    import signal
    import threading
    import warnings
    previous = (warnings.showwarning, None)
    warnings.showwarning = _show_warning
    if threading.current_thread() is threading.main_thread():
        previous = (previous[0], signal.signal(signal.SIGTERM, _on_sigterm))
    return previous


def _restore_handlers(previous) -> None:
    import signal
    import warnings
    warnings.showwarning = previous[0]
    if previous[1] is not None:
        signal.signal(signal.SIGTERM, previous[1])


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def _resume_hint(options) -> str:
    out = getattr(options, "out", None)
    if out is None:
        return ""
    from pathlib import Path

    from sqsd_fast.io.checkpoint import has_saved_rows
    if isinstance(options, TrainAdapterOptions):
        if any((Path(out) / "checkpoints").glob("checkpoint-*")):
            return (f"; checkpoints are kept in {Path(out) / 'checkpoints'}, rerun the same "
                    f"command with --resume")
        return ""
    if has_saved_rows(out):
        return "; completed batches are saved, rerun the same command with --resume"
    return ""


# -------------------------------------------------------------------------- commands


def run_scoring(options) -> int:
    from sqsd_fast import pipeline
    from sqsd_fast.ranking import sort_scored
    result = pipeline.run(options)
    if not result.is_main:   # rank 0 of a multi-process run has the rows, and reports
        return 0
    if not options.quiet:
        print_summary(result)
    if not sort_scored(result.rows, result.column):
        statuses = sorted({r["status"] for r in result.rows})
        _error(f"no sample could be scored (status: {', '.join(statuses)}); {options.out} lists "
               f"the status of each")
        return EXIT_ERROR
    return 0


def print_summary(result) -> None:
    import numpy as np

    from sqsd_fast.ranking import sort_scored
    options, rows, column = result.options, result.rows, result.column
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"{PROG} {options.COMMAND}: {len(rows)} samples from {options.data} -> "
          f"{options.out} (metric {options.metric})")
    print("  status:  " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for name, what in (options.sources().items() if hasattr(options, "sources") else ()):
        print(f"  {name.replace('_', ' ')}: {what}")
    if result.prepared.anchors_in_data:
        print(f"  anchors that are also samples of --data: {len(result.prepared.anchors_in_data)} "
              f"(listed in {options.out}.meta.json)")
    print(f"  truncated to --max-length {options.max_length}: {result.prepared.n_truncated}")
    scored = sort_scored(rows, column)
    if not scored:
        print("  no sample could be scored")
        return
    qs = np.quantile(np.array([r[column] for r in scored]), [0.0, 0.25, 0.5, 0.75, 1.0])
    print(f"  {column}:  min {qs[0]:+.4g}  25% {qs[1]:+.4g}  median {qs[2]:+.4g}  "
          f"75% {qs[3]:+.4g}  max {qs[4]:+.4g}")
    by_index = {r.index: r for r in result.prepared.records}
    k = min(3, len(scored))
    print(f"  highest {column}" + (" (riskiest first):" if column == "sqsd" else ":"))
    for r in scored[:k]:
        print(_summary_line(r, column, by_index, len(scored)))
    if len(scored) > k:
        print(f"  lowest {column}:")
        for r in scored[max(k, len(scored) - k):]:
            print(_summary_line(r, column, by_index, len(scored)))


def _summary_line(row: dict, column: str, by_index: dict, n: int) -> str:
    rank = row.get("rank")
    rank_text = f"#{rank:<{len(str(n))}} " if rank is not None else ""
    record = by_index.get(row["index"])
    snippet = record.snippet(60) if record is not None else ""
    return f"    {rank_text}{row[column]:+.4f}  [index {row['index']}]  {snippet}"


# Commands that are one call of a module Python users call too: (module, function); each
# module's format_summary(result) describes the result.
_MODULE_COMMANDS = {"train-adapter": ("sqsd_fast.training", "train_adapter"),
                    "merge-adapter": ("sqsd_fast.training.merge", "merge_adapter"),
                    "anchor-direction": ("sqsd_fast.influence.anchor_direction", "anchor_direction"),
                    "evaluate": ("sqsd_fast.evaluation", "evaluate"),
                    "fetch-model": ("sqsd_fast.models.names", "fetch_model")}


def run_module_command(options) -> int:
    import importlib
    module_name, function = _MODULE_COMMANDS[options.COMMAND]
    module = importlib.import_module(module_name)
    result = getattr(module, function)(options)
    if not getattr(options, "quiet", False):
        print(module.format_summary(result))
    return 0


def run_subsets(options: SubsetsOptions) -> int:
    from sqsd_fast.subsets import write_subsets
    summary = write_subsets(options.scores, options.data, options.out_dir, num=options.num,
                            window=options.window, column=options.column,
                            data_split=options.data_split)
    column = summary["column"]
    print(f"{PROG} subsets: {summary['n_scored']} scored samples, {len(summary['subsets'])} "
          f"windows of {summary['window']} -> {options.out_dir}/")
    for s in summary["subsets"]:
        print(f"  {s['name']}: ranks {s['start'] + 1}-{s['stop']}  mean {column} "
              f"{s['mean_score']:+.4f}  -> {s['file']}")
    print(f"  plot: {os.path.join(options.out_dir, 'subsets.png')}")
    if not summary["data_checked"]:
        print(f"  note: {options.scores} has no run record (.meta.json beside it), so it could not "
              f"be checked that --data is the file that was scored")
    return 0


def run_filter(options: FilterOptions) -> int:
    from sqsd_fast.filtering import filter_data
    result = filter_data(options.scores, options.data, options.out, drop_top=options.drop_top,
                         max_score=options.max_score, weight_column=options.weight_column,
                         column=options.column, data_split=options.data_split)
    if options.quiet:
        return 0
    kept = (f"{result.n_records} records with {options.weight_column} = 0 for the dropped"
            if options.weight_column else f"{result.n_kept} of {result.n_records} records kept")
    print(f"{PROG} filter: dropped {result.rule} by {result.column} -> {options.out} ({kept})")
    if result.dropped:
        print(f"  dropped scores from {result.dropped[0]['score']:+.4f} down to {result.threshold:+.4f}; "
              f"indices: {', '.join(str(d['index']) for d in result.dropped[:10])}"
              + (" ..." if result.n_dropped > 10 else ""))
    print(f"  unscored records kept: {result.n_records - result.n_scored}; every dropped index and "
          f"score: {result.summary_path}")
    if not result.data_checked:
        print(f"  note: {options.scores} has no run record (.meta.json beside it), so it could not "
              f"be checked that --data is the file that was scored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
