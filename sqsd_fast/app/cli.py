"""The `sqsd-fast` command line: score, project, baseline, anchor-direction, subsets,
filter, train-adapter, merge-adapter, evaluate, fetch-model.

    sqsd-fast score --model BASE --danger-state A0 --danger-direction AD \\
                    --safety-direction AS --data train.jsonl --out scores.jsonl

Argument parsing and printing only: the commands, their options dataclasses (the parser is
built from them), the functions that run them (which Python users call too) and their
summaries are one table, sqsd_fast.app.commands.
Every error prints one line to stderr with a non-zero exit code (docs/USAGE.md lists them).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import textwrap
import threading
import warnings
from pathlib import Path
from typing import Sequence

from sqsd_fast import __version__
from sqsd_fast.app.commands import COMMANDS, command
from sqsd_fast.io.checkpoint import has_saved_rows
from sqsd_fast.options import OptionError, RecordFieldOptions

PROG = "sqsd-fast"
RECORD_FIELDS = {f.name for f in dataclasses.fields(RecordFieldOptions)}
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
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

        def _add_dataclass_arguments(self, dtype):
            # Fields an options class keeps out of the CLI (train-adapter: most of
            # TrainingArguments'), and the options it takes that are no field.
            self._hidden = getattr(dtype, "CLI_HIDDEN", frozenset())
            self._earlier = {new: old for old, new in getattr(dtype, "ALIASES", {}).items()}
            self._group_spec = getattr(dtype, "CLI_GROUP", None)   # (title, description, names)
            super()._add_dataclass_arguments(dtype)
            for name, spec in getattr(dtype, "CLI_EXTRA", {}).items():
                super().add_argument("--" + name.replace("_", "-"), dest=name, **spec)

        def add_argument(self, *names, **kwargs):
            dest = kwargs.get("dest") or names[0].lstrip("-").replace("-", "_")
            if dest in getattr(self, "_hidden", ()):
                return None
            if dest in getattr(self, "_earlier", {}) and not kwargs.get("dest"):   # its earlier name too
                names = (*names, "--" + self._earlier[dest].replace("_", "-"))
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
            spec = getattr(self, "_group_spec", None)
            if spec is not None and dest in spec[2]:
                if not hasattr(self, "_group"):
                    self._group = self.add_argument_group(spec[0], spec[1])
                return self._group.add_argument(*names, **kwargs)
            return super().add_argument(*names, **kwargs)

        def _record_fields(self):
            if not hasattr(self, "_record_group"):
                self._record_group = self.add_argument_group("record fields", FIELD_NAMES_NOTE)
            return self._record_group

    return CommandParser


def build_parser(command_name: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser: every command's options when ``command_name`` is None, else only
    that command's (the others listed with their help; "" for none, as ``sqsd-fast --help``
    needs), so that a run loads only its own options classes."""
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="SQSD: per-sample safety-degradation risk scores for LLM fine-tuning "
                    "data. Score a data set before fine-tuning on it; higher = riskier.",
        epilog="Try it: python -m sqsd_fast.demo (SmolLM2-135M; --toy: offline, seconds)\n"
               "Run '%(prog)s COMMAND --help' for each command's options.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_command_parser_class())
    commands = {}
    for name, entry in COMMANDS.items():
        if command_name is not None and name != command_name:
            sub.add_parser(name, dataclass_types=(), help=entry.help)
            continue
        cls = entry.options_class()
        commands[name] = sub.add_parser(
            name, dataclass_types=cls, formatter_class=_Formatter, help=entry.help,
            description=cls.DESCRIPTION, epilog=getattr(cls, "EPILOG", None))
    parser.command_parsers = commands  # for usage errors found after parsing
    return parser


def parse_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None):
    """The command's options dataclass; a bad value is a usage error naming the option."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "fetch-model" and not argv[1].startswith("-"):
        argv.insert(1, "--name")          # sqsd-fast fetch-model NAME
    args = parser.parse_args(argv)
    cls = COMMANDS[args.command].options_class()
    names = [f.name for f in dataclasses.fields(cls)] + list(getattr(cls, "CLI_EXTRA", {}))
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    try:
        return cls.from_keywords(**values)
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
    # bitsandbytes (when installed) is imported by transformers wherever a model loads, and
    # its CPU backend logs that an optional kernels package is missing: not for our users.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else "")
    try:
        options = parse_options(parser, argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    previous = _install_handlers()
    try:
        return run_command(options)
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
    previous = (warnings.showwarning, None)
    warnings.showwarning = _show_warning
    if threading.current_thread() is threading.main_thread():
        previous = (previous[0], signal.signal(signal.SIGTERM, _on_sigterm))
    return previous


def _restore_handlers(previous) -> None:
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

    if options.COMMAND == "train-adapter":
        if any((Path(out) / "checkpoints").glob("checkpoint-*")):
            return (f"; checkpoints are kept in {Path(out) / 'checkpoints'}, rerun the same "
                    f"command with --resume")
        return ""
    if has_saved_rows(out):
        return "; completed batches are saved, rerun the same command with --resume"
    return ""


# -------------------------------------------------------------------------- commands


def run_command(options) -> int:
    """Run the command (sqsd_fast.app.commands) and print its summary; the exit code."""
    entry = command(options.COMMAND)
    result = entry.runner()(options)
    if not getattr(result, "is_main", True):   # rank 0 of a multi-process run reports
        return 0
    if not getattr(options, "quiet", False):
        print(entry.summarizer()(result))
    failure = getattr(result, "failure", None)
    if failure:
        _error(failure)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
