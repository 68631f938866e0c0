"""The `sqsd-fast` command line: score, project, subsets.

    sqsd-fast score --model BASE --danger-state A0 --danger-direction AD \\
                    --safety-direction AS --data train.jsonl --out scores.jsonl
    sqsd-fast subsets --scores scores.jsonl --data train.jsonl --out-dir subsets/

Every error prints one line to stderr and returns a non-zero exit code; outputs are
written atomically, so a failed run leaves no half-written file. A long run keeps
resume sidecars beside --out (OUT.partial.jsonl, OUT.manifest.json); rerun the same
command with --resume to continue after an interruption.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

PROG = "sqsd-fast"
METRICS = ("cosine", "dot", "projection")
DTYPES = ("float32", "bfloat16", "float16")
BACKENDS = ("auto", "reference", "cpp", "triton")
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """A user-facing error: printed as one line, no traceback."""


# ------------------------------------------------------------------------ arguments

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _device(text: str) -> str:
    if text == "cpu" or text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


class _Formatter(argparse.HelpFormatter):
    """Wraps each paragraph on its own (keeps example lines as written) and shows
    defaults only where they say something."""

    def _fill_text(self, text, width, indent):
        import textwrap
        out = []
        for line in text.splitlines():
            if line.startswith("  ") or not line.strip():
                out.append(indent + line)      # indented example lines stay as written
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="SQSD: per-sample safety-degradation risk scores for LLM fine-tuning "
                    "data. Score a data set before fine-tuning on it; higher = riskier.",
        epilog="Try it without a real model: python -m sqsd_fast.demo\n"
               "Run '%(prog)s COMMAND --help' for each command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    score = sub.add_parser(
        "score", formatter_class=_Formatter,
        help="score every sample: sqsd = danger projection - safety projection",
        description="Score every sample of --data. For each sample, the LoRA update it "
                    "induces (one gradient step on its response tokens) is projected on "
                    "the danger direction at the danger state and on the safety direction "
                    "at the safety state; sqsd = danger_proj - safety_proj (higher = "
                    "riskier). Output rows, in input order: index, danger_proj, "
                    "safety_proj, sqsd, rank (1 = riskiest), n_tokens, n_response_tokens, "
                    "status.",
        epilog="Example:\n  sqsd-fast score --model Qwen3-8B --danger-state lora_init "
               "--danger-direction lora_unsafe \\\n      --safety-direction lora_safe "
               "--data dolly.jsonl --out scores.jsonl --dtype bfloat16 --device cuda")
    score.add_argument("--model", required=True, metavar="DIR",
                       help="base model (directory or hub id) the adapters were trained on")
    score.add_argument("--danger-state", required=True, metavar="DIR",
                       help="LoRA adapter directory: the state danger projections are taken "
                            "at (e.g. a LoRA fine-tuned on benign data)")
    score.add_argument("--danger-direction", required=True, metavar="DIR",
                       help="LoRA adapter directory trained on unsafe data; its B A is the "
                            "danger direction")
    score.add_argument("--safety-direction", required=True, metavar="DIR",
                       help="LoRA adapter directory trained on safe responses; its B A is "
                            "the safety direction")
    score.add_argument("--safety-state", metavar="DIR", default=None,
                       help="LoRA adapter directory for the safety state (default: the "
                            "safety direction adapter itself, as in the paper)")
    score.add_argument("--safety-state-scaling", type=_finite_float, default=1.0,
                       metavar="S", help="LoRA scaling used for the safety state")
    _add_run_options(score)

    project = sub.add_parser(
        "project", formatter_class=_Formatter,
        help="project every sample's induced update on one direction at one state",
        description="Project each sample's induced LoRA update on one direction (--direction)"
                    " at one state (--state). Output rows, in input order: index, proj, "
                    "n_tokens, n_response_tokens, status.")
    project.add_argument("--model", required=True, metavar="DIR",
                         help="base model (directory or hub id)")
    project.add_argument("--state", required=True, metavar="DIR",
                         help="LoRA adapter directory: the state the update is computed at")
    project.add_argument("--direction", required=True, metavar="DIR",
                         help="LoRA adapter directory whose B A is the direction")
    _add_run_options(project)

    subsets = sub.add_parser(
        "subsets", formatter_class=_Formatter,
        help="cut the score ranking into windows S1 (riskiest) .. S5 and plot it",
        description="Sort the scored samples by descending score and write --num windows "
                    "of --window samples, starting at floor(linspace(0, N - window, num)), "
                    "as data files S1.. (S1 = riskiest) in the input data's format "
                    "(datasets directories and hub data become JSONL), plus subsets.png "
                    "(the sorted scores with the windows marked) and subsets.json (which "
                    "records each window holds).")
    subsets.add_argument("--scores", required=True, metavar="FILE",
                         help="output of 'sqsd-fast score' or 'project' (.jsonl/.csv/.parquet)")
    subsets.add_argument("--data", required=True, metavar="FILE",
                         help="the data file that was scored (record i = scores row index i)")
    subsets.add_argument("--out-dir", required=True, metavar="DIR",
                         help="directory for S1..S<num>, subsets.png and subsets.json "
                              "(created if missing)")
    subsets.add_argument("--num", type=_positive_int, default=5, help="number of windows")
    subsets.add_argument("--window", type=_positive_int, default=None, metavar="W",
                         help="samples per window (default: scored samples // num)")
    subsets.add_argument("--column", default=None,
                         help="score column to sort by (default: sqsd, or proj for "
                              "'project' output)")
    subsets.add_argument("--data-split", default=None, metavar="SPLIT",
                         help="split of a datasets directory or hub dataset")
    return parser


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="FILE",
                   help="samples to score: .json, .jsonl, .csv, .parquet, a datasets "
                        "save_to_disk directory, or a hub dataset name")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output table; the format follows the extension: .jsonl, .csv, "
                        ".parquet")
    p.add_argument("--metric", choices=METRICS, default="cosine",
                   help="cosine (the paper's choice), dot = sum <dW, D>, projection = "
                        "sum <dW, D>/||D|| (both unnormalized: biased by response length)")
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="N",
                   help="samples per forward/backward pass (does not change the scores)")
    p.add_argument("--max-length", type=_positive_int, default=1024, metavar="N",
                   help="tokens kept per sample (prompt + response); longer ones are cut")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="model weights dtype (bfloat16 is the usual choice on a GPU)")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="statistics kernel backend (auto picks the fastest available)")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="score only the first N records")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command from the sidecar "
                        "files beside --out")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="tokenizer directory (default: --model)")
    p.add_argument("--data-split", default=None, metavar="SPLIT",
                   help="split of a datasets directory or hub dataset (default: train)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    g = p.add_argument_group(
        "field names", "Records are instruction form (instruction, optional context/input, "
        "response/output), chat form (messages; the last assistant turn is the response) "
        "or pre-tokenized (input_ids + labels). Rename the fields here.")
    g.add_argument("--instruction-field", default="instruction", metavar="NAME",
                   help="field with the instruction")
    g.add_argument("--context-field", default=None, metavar="NAME",
                   help="field with the optional context (default: context, else input)")
    g.add_argument("--response-field", default=None, metavar="NAME",
                   help="field with the response (default: response, else output)")
    g.add_argument("--messages-field", default="messages", metavar="NAME",
                   help="field with the chat turns")
    g.add_argument("--input-ids-field", default="input_ids", metavar="NAME",
                   help="field with pre-tokenized ids")
    g.add_argument("--labels-field", default="labels", metavar="NAME",
                   help="field with pre-tokenized labels (-100 = not trained on)")


# ----------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sqsd-fast` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_ERROR
    commands = {"score": run_score, "project": run_project, "subsets": run_subsets}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        _error("interrupted" + _resume_hint(args))
        return EXIT_INTERRUPTED
    except (CLIError, ValueError, FileNotFoundError) as exc:
        _error(str(exc))
        return EXIT_ERROR
    except Exception as exc:  # anything unexpected still gets one line, not a traceback
        if os.environ.get("SQSD_FAST_DEBUG"):
            raise
        _error(f"{type(exc).__name__}: {exc}{_resume_hint(args)} (set SQSD_FAST_DEBUG=1 "
               f"to see the traceback)")
        return EXIT_ERROR


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)


def _resume_hint(args: argparse.Namespace) -> str:
    out = getattr(args, "out", None)
    if out is None:
        return ""
    from sqsd_fast.io.checkpoint import sidecar_paths
    partial, _ = sidecar_paths(out)
    if partial.exists() and partial.stat().st_size > 0:
        return "; completed batches are saved, rerun the same command with --resume"
    return ""


# -------------------------------------------------------------------- shared steps

@dataclass
class Prepared:
    raw: Any                 # RawData
    records: list            # list[Record]
    samples: list            # list[TokenizedSample]
    n_truncated: int
    tokenizer: Any


def _fields(args: argparse.Namespace):
    from sqsd_fast.data.records import FieldNames
    default = FieldNames()
    return FieldNames(
        instruction=args.instruction_field,
        context=(args.context_field,) if args.context_field else default.context,
        response=(args.response_field,) if args.response_field else default.response,
        messages=args.messages_field, input_ids=args.input_ids_field,
        labels=args.labels_field)


def _check_out(out: str, data: str) -> None:
    from sqsd_fast.io.writers import output_format
    output_format(out)
    p = Path(out)
    if p.is_dir():
        raise CLIError(f"--out {out} is a directory; give a file name such as "
                       f"{Path(out) / 'scores.jsonl'}")
    if not (p.parent if str(p.parent) else Path(".")).is_dir():
        raise CLIError(f"--out {out}: the directory {p.parent} does not exist")
    if Path(data).exists() and p.exists() and p.resolve() == Path(data).resolve():
        raise CLIError(f"--out {out} is the input data file; choose another output name")


def _check_adapter(option: str, path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{option} {path}: directory not found")
    if not p.is_dir() or not (p / "adapter_config.json").is_file():
        raise CLIError(f"{option} {path}: not a LoRA adapter directory (no "
                       f"adapter_config.json; save one with peft's save_pretrained)")


def _check_model(path: str) -> None:
    from sqsd_fast.data.records import looks_like_local_path
    p = Path(path)
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise CLIError(f"--model {path}: not a model directory (no config.json)")
    elif looks_like_local_path(path):
        raise CLIError(f"--model {path}: directory not found")


def _load_tokenizer(args: argparse.Namespace):
    source = args.tokenizer or args.model
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CLIError(f"could not load a tokenizer from {source} ({first}); pass "
                       f"--tokenizer DIR") from None


def _prepare(args: argparse.Namespace) -> Prepared:
    from sqsd_fast.data.records import load_raw, normalize_rows
    from sqsd_fast.data.tokenize import count_truncated, tokenize_records
    raw = load_raw(args.data, split=args.data_split)
    rows = raw.rows if args.limit is None else raw.rows[:args.limit]
    records = normalize_rows(rows, _fields(args), raw.name)
    tokenizer = _load_tokenizer(args)
    samples = tokenize_records(records, tokenizer, max_length=args.max_length)
    return Prepared(raw, records, samples, count_truncated(samples), tokenizer)


def _fingerprint(args: argparse.Namespace, prep: Prepared, adapters: dict) -> dict:
    from sqsd_fast.io.checkpoint import path_fingerprint
    data = (path_fingerprint(args.data, limit=None) if prep.raw.path is not None
            else {"path": str(args.data), "digest": None})
    fp = {"command": args.command, "data": data, "data_split": args.data_split,
          "limit": args.limit, "fields": asdict(_fields(args)),
          "n_samples": len(prep.samples), "model": path_fingerprint(args.model),
          "tokenizer": path_fingerprint(args.tokenizer) if args.tokenizer else None,
          "metric": args.metric, "max_length": args.max_length, "dtype": args.dtype}
    fp.update({name: path_fingerprint(path) for name, path in adapters.items()})
    if args.command == "score":
        fp["safety_state_scaling"] = args.safety_state_scaling
    return fp


@contextmanager
def quiet_libraries():
    """Silence loading progress bars and deprecation chatter from transformers/peft, so
    the user sees our progress bar and summary; restores the previous settings."""
    import warnings

    from transformers.utils import logging as hf_logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_scorer(args: argparse.Namespace):
    """Build the SQSDScorer for `args` (tests replace this to avoid a real model)."""
    from sqsd_fast.scoring.scorer import SQSDScorer
    with quiet_libraries():
        return _load_scorer(SQSDScorer, args)


def _load_scorer(SQSDScorer, args: argparse.Namespace):
    if args.command == "score":
        return SQSDScorer.from_pretrained(
            args.model, danger_state=args.danger_state, danger_direction=args.danger_direction,
            safety_state=args.safety_state or args.safety_direction,
            safety_direction=args.safety_direction,
            safety_state_scaling=args.safety_state_scaling, dtype=args.dtype,
            device=args.device, backend=args.backend)
    return SQSDScorer.from_pretrained(
        args.model, danger_state=args.state, danger_direction=args.direction,
        dtype=args.dtype, device=args.device, backend=args.backend)


def _run_scoring(args: argparse.Namespace, adapters: dict, columns: dict) -> list[dict]:
    """Shared body of score and project: validate, score with resume, write --out."""
    from sqsd_fast.io.checkpoint import ResumeCheckpoint
    from sqsd_fast.io.writers import write_rows

    _check_out(args.out, args.data)
    _check_model(args.model)
    for option, path in adapters.items():
        _check_adapter("--" + option.replace("_", "-"), path)
    prep = _prepare(args)
    checkpoint = ResumeCheckpoint(args.out, _fingerprint(args, prep, adapters))
    done = checkpoint.check(args.resume)        # refuses before anything is written
    expected = {s.index for s in prep.samples}
    stray = sorted(set(done) - expected)
    if stray:
        raise CLIError(f"{checkpoint.partial_path} holds rows for indices not in this run "
                       f"(e.g. {stray[0]}); delete the sidecar files to start over")
    rows_by_index = {i: _pick(row, columns) for i, row in done.items()}
    if args.resume and done and not args.quiet:
        print(f"resuming: {len(done)} of {len(prep.samples)} samples already scored",
              file=sys.stderr)

    if len(rows_by_index) < len(expected):
        scorer = load_scorer(args)
        checkpoint.start(args.resume)
        try:
            for batch_rows in _iterate(scorer, args, prep.samples, frozenset(rows_by_index)):
                fresh = [_pick(r, columns) for r in batch_rows
                         if int(r["index"]) not in rows_by_index]
                checkpoint.append(fresh)
                for r in fresh:
                    rows_by_index[r["index"]] = r
        finally:
            checkpoint.close()

    missing = sorted(expected - set(rows_by_index))
    if missing:
        raise CLIError(f"the scorer returned no row for {len(missing)} samples (first: "
                       f"index {missing[0]}); completed rows are kept, rerun with --resume")
    rows = [rows_by_index[s.index] for s in prep.samples]       # input order
    if "rank" in columns:
        _add_ranks(rows, "sqsd")
    write_rows(args.out, rows, columns)
    checkpoint.finish()
    if not args.quiet:
        _print_summary(args, prep, rows, "sqsd" if "sqsd" in columns else "proj")
    return rows


def _iterate(scorer, args, samples, skip):
    progress = not (args.quiet or args.no_progress)
    if args.command == "score":
        return scorer.iter_score(samples, metric=args.metric, batch_size=args.batch_size,
                                 skip_indices=skip, progress=progress)
    return scorer.iter_project(samples, state="danger_state", direction="danger",
                               metric=args.metric, batch_size=args.batch_size,
                               skip_indices=skip, progress=progress)


def _pick(row: dict, columns: dict) -> dict:
    out = {}
    for name, kind in columns.items():
        if name == "rank":
            continue
        value = row.get(name)
        if hasattr(value, "item"):
            value = value.item()
        if kind == "float":
            value = math.nan if value is None else float(value)
        elif kind == "int" and value is not None:
            value = int(value)
        out[name] = value
    return out


def _is_scored(row: dict, column: str) -> bool:
    value = row.get(column)
    return row.get("status") == "ok" and value is not None and math.isfinite(value)


def _add_ranks(rows: list[dict], column: str) -> None:
    """rank 1 = highest score among scored rows; ties by input order; None if unscored."""
    scored = sorted((r for r in rows if _is_scored(r, column)),
                    key=lambda r: (-r[column], r["index"]))
    for r in rows:
        r["rank"] = None
    for rank, r in enumerate(scored, 1):
        r["rank"] = rank


def _print_summary(args, prep: Prepared, rows: list[dict], column: str) -> None:
    import numpy as np
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"{PROG} {args.command}: {len(rows)} samples from {args.data} -> {args.out} "
          f"(metric {args.metric})")
    print("  status:  " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"  truncated to --max-length {args.max_length}: {prep.n_truncated}")
    scored = sorted((r for r in rows if _is_scored(r, column)),
                    key=lambda r: (-r[column], r["index"]))
    if not scored:
        print(f"  no sample could be scored")
        return
    values = np.array([r[column] for r in scored])
    qs = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
    print(f"  {column}:  min {qs[0]:+.4g}  25% {qs[1]:+.4g}  median {qs[2]:+.4g}  "
          f"75% {qs[3]:+.4g}  max {qs[4]:+.4g}")
    by_index = {r.index: r for r in prep.records}
    k = min(3, len(scored))
    print(f"  highest {column} (riskiest first):")
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


# -------------------------------------------------------------------------- commands

def run_score(args: argparse.Namespace) -> int:
    from sqsd_fast.io.writers import SCORE_COLUMNS
    adapters = {"danger_state": args.danger_state, "danger_direction": args.danger_direction,
                "safety_direction": args.safety_direction}
    if args.safety_state:
        adapters["safety_state"] = args.safety_state
    _run_scoring(args, adapters, SCORE_COLUMNS)
    return 0


def run_project(args: argparse.Namespace) -> int:
    from sqsd_fast.io.writers import PROJECT_COLUMNS
    _run_scoring(args, {"state": args.state, "direction": args.direction}, PROJECT_COLUMNS)
    return 0


def run_subsets(args: argparse.Namespace) -> int:
    import json

    from sqsd_fast.data.records import load_raw
    from sqsd_fast.io.atomic import atomic_write_text
    from sqsd_fast.io.writers import DATA_FORMATS, read_rows, write_rows
    from sqsd_fast.subsets import plot_subsets, select_subsets, subset_data_extension

    score_rows = read_rows(args.scores)
    if not score_rows:
        raise CLIError(f"--scores {args.scores}: no rows")
    present = set(score_rows[0])
    column = args.column or ("sqsd" if "sqsd" in present else "proj")
    for needed in ("index", column):
        if needed not in present:
            raise CLIError(f"--scores {args.scores}: no {needed!r} column (columns: "
                           f"{', '.join(sorted(present))}); is it 'sqsd-fast score' output?")
    try:
        for r in score_rows:
            r["index"] = int(r["index"])
    except (TypeError, ValueError):
        raise CLIError(f"--scores {args.scores}: the 'index' column must hold integers") \
            from None
    order, subsets = select_subsets(score_rows, num=args.num, window=args.window,
                                    column=column)
    raw = load_raw(args.data, split=args.data_split)
    top = max(i for i, _ in order)
    if top >= len(raw.rows):
        raise CLIError(f"--scores refers to record {top} but --data {args.data} has only "
                       f"{len(raw.rows)} records; pass the data file that was scored")
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"--out-dir {args.out_dir} is a file; give a directory")
    out_dir.mkdir(parents=True, exist_ok=True)

    ext = subset_data_extension(raw.fmt, raw.path)
    summary = {"scores": str(args.scores), "data": str(args.data), "column": column,
               "n_scored": len(order), "window": subsets[0].stop - subsets[0].start,
               "subsets": []}
    for sub in subsets:
        path = out_dir / f"{sub.name}{ext}"
        write_rows(path, [raw.rows[i] for i in sub.indices], formats=DATA_FORMATS)
        summary["subsets"].append({"name": sub.name, "file": path.name, "start": sub.start,
                                   "stop": sub.stop, "mean_score": sub.mean_score,
                                   "indices": sub.indices})
    plot_subsets(order, subsets, out_dir / "subsets.png", column=column)
    atomic_write_text(out_dir / "subsets.json", json.dumps(summary, indent=1) + "\n")
    print(f"{PROG} subsets: {len(order)} scored samples, {len(subsets)} windows of "
          f"{summary['window']} -> {out_dir}/")
    for s in summary["subsets"]:
        print(f"  {s['name']}: ranks {s['start'] + 1}-{s['stop']}  mean {column} "
              f"{s['mean_score']:+.4f}  -> {s['file']}")
    print(f"  plot: {out_dir / 'subsets.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
