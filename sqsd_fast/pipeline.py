"""Score a data file to an output file, resumably: the run the CLI and Python share.

    from sqsd_fast.pipeline import score_file
    result = score_file(model="BASE", danger_state="lora_initial",
                        danger_direction="lora_unsafe", safety_direction="lora_safe",
                        data="train.jsonl", out="scores.jsonl", resume=True)
    result.rows          # one dict per record, input order, with rank (1 = riskiest)

Steps: check the paths (before anything loads), read and tokenize the data, fingerprint
the run, take completed rows from the resume sidecars beside ``out``, score the rest
batch by batch (each batch appended durably to the sidecar), rank, write ``out``
atomically, delete the sidecars. A run that stops part-way keeps every completed batch;
the same call with ``resume=True`` scores only what is missing. Bad input raises a
``ValueError`` naming the option.

Started on several processes (``torchrun ... sqsd-fast score``, ``accelerate launch``, or
a caller's ``torch.distributed`` group: see ``sqsd_fast.distributed``), every process
calls :func:`run` with the same options; each scores its token-balanced share of the
samples into its own sidecars, and rank 0 merges them into ``out``. Only rank 0's result
holds the rows.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqsd_fast.options import ProjectOptions, RunOptions, ScoreOptions


@dataclass
class Prepared:
    """The data of a run, read and tokenized."""

    raw: Any                 # sqsd_fast.data.RawData
    records: list            # list[Record]
    samples: list            # list[TokenizedSample]
    n_truncated: int
    tokenizer: Any


@dataclass
class RunResult:
    """What a finished run wrote, and what it saw on the way."""

    options: RunOptions       # as this process ran them (its own --device on several)
    rows: list[dict]          # the rows written to options.out, in input order; [] on the
                              # ranks other than 0 of a multi-process run
    prepared: Prepared
    n_resumed: int            # rows taken over from an interrupted run
    rank: int = 0             # this process in a multi-process run
    world_size: int = 1       # the number of processes of the run

    @property
    def column(self) -> str:
        return self.options.SCORE_COLUMN

    @property
    def is_main(self) -> bool:
        """Whether this result holds the rows (always, unless a rank other than 0)."""
        return self.rank == 0


def score_file(options: ScoreOptions | None = None, /, **kwargs) -> RunResult:
    """SQSD scores of every record of ``data`` written to ``out`` (see :class:`ScoreOptions`)."""
    return run(options if options is not None else ScoreOptions(**kwargs))


def project_file(options: ProjectOptions | None = None, /, **kwargs) -> RunResult:
    """One projection per record of ``data`` written to ``out`` (see :class:`ProjectOptions`)."""
    return run(options if options is not None else ProjectOptions(**kwargs))


def output_columns(options: RunOptions) -> dict[str, str]:
    from sqsd_fast.io.writers import PROJECT_COLUMNS, SCORE_COLUMNS
    own = getattr(options, "COLUMNS", None)   # a command with its own table (baseline)
    if own is not None:
        return own
    if not isinstance(options, ScoreOptions):
        return PROJECT_COLUMNS
    columns = {}
    for name, kind in SCORE_COLUMNS.items():
        columns[name] = kind
        if name == "sqsd":     # one pair per further danger direction, after the main one
            for extra in options.more_danger_directions():
                columns[f"danger_proj_{extra}"] = columns[f"sqsd_{extra}"] = "float"
    return columns


def run(options: RunOptions) -> RunResult:
    """The resumable run of ``options`` (a :class:`ScoreOptions` or :class:`ProjectOptions`);
    on every process of a multi-process run alike."""
    from sqsd_fast import distributed
    from sqsd_fast.io.lock import output_lock

    columns = output_columns(options)
    if distributed.launched():
        with distributed.joined(options.device) as world:
            return _run_ranks(options, columns, world)
    check_paths(options)
    with output_lock(options.out):
        return _run_locked(options, columns)


def _run_locked(options: RunOptions, columns: dict) -> RunResult:
    from sqsd_fast.io.checkpoint import ResumeCheckpoint, read_saved_rows
    from sqsd_fast.io.writers import select_columns

    prep = prepare(options)
    fp = fingerprint(options, prep)
    done = read_saved_rows(options.out, fp, options.resume)   # refuses before anything is written
    _check_saved_indices(done, prep, options.out)
    rows_by_index = {i: select_columns(row, columns) for i, row in done.items()}
    if options.resume and done and not options.quiet:
        print(f"resuming: {len(done)} of {len(prep.samples)} samples already scored",
              file=sys.stderr)
    if len(rows_by_index) < len(prep.samples):
        _score_into(ResumeCheckpoint(options.out, fp), options, columns, prep.samples,
                    rows_by_index)
    rows = _write_output(options, columns, prep, rows_by_index, fp)
    return RunResult(options, rows, prep, n_resumed=len(done))


def _run_ranks(options: RunOptions, columns: dict, world) -> RunResult:
    """:func:`_run_locked` on one rank of several: each step that can fail runs on every
    rank through ``world.agree``, so all ranks stop together, naming the rank that failed."""
    from sqsd_fast import distributed
    from sqsd_fast.io.checkpoint import (ResumeCheckpoint, has_saved_rows, rank_part,
                                         read_saved_rows)
    from sqsd_fast.io.lock import output_lock
    from sqsd_fast.io.writers import select_columns

    part = rank_part(world.rank, world.size)
    here: dict[str, Any] = {}   # what this rank keeps from one agreed step to the next

    def check():
        check_device_available(options.device)   # before it is mapped to this rank's GPU
        mine = dataclasses.replace(options, device=distributed.rank_device(options.device, world),
                                   no_progress=options.no_progress or not world.is_main)
        check_paths(mine)
        if world.local_rank == 0:   # a .gguf is converted once per machine, not per rank
            from sqsd_fast.models import resolve_model
            resolve_model(options.model, progress=mine.progress)
        here["options"] = mine

    world.agree(check)
    distributed.check_shared_directory(world, Path(options.out).absolute().parent)
    with ExitStack() as locks:
        def read():
            locks.enter_context(output_lock(options.out, part=part))
            if world.is_main:   # also keeps out a one-process run, or a launch of another size
                locks.enter_context(output_lock(options.out))
            here["prep"] = prepare(here["options"])
            fp = fingerprint(options, here["prep"])
            return _launch_view(options, here["prep"], fp), fp

        views = world.agree(read)
        distributed.check_same_options(world, [view for view, _ in views], _option_labels(options))
        fp = views[0][1]   # rank 0's names the inputs in every rank's sidecars and the record
        prep = here["prep"]

        def saved():   # rank 0 reads every rank's sidecars, of this or an earlier world size
            if world.is_main:
                done = read_saved_rows(options.out, fp, options.resume)
                _check_saved_indices(done, prep, options.out)
                return sorted(done)

        done = set(world.agree(saved)[0])
        if world.is_main and options.resume and done and not options.quiet:
            print(f"resuming: {len(done)} of {len(prep.samples)} samples already scored",
                  file=sys.stderr)
        # The rows still missing are split, not the whole set: a resume shares what a dead
        # rank left among all ranks, and any world size can continue any other's run.
        todo = [s for s in prep.samples if s.index not in done]
        mine = distributed.shard_samples(todo, world.size, world.rank)

        def score():
            if mine:   # a rank left without samples writes nothing and waits for the others
                _score_into(ResumeCheckpoint(options.out, fp, part=part), here["options"],
                            columns, mine, {})

        try:
            world.agree(score)
        except distributed.DistributedRunError as exc:
            if not has_saved_rows(options.out):
                raise
            raise distributed.DistributedRunError(
                f"{exc}; completed batches are kept, rerun the same command with --resume",
                reported_elsewhere=exc.reported_elsewhere) from exc.__cause__

        def merge():
            if world.is_main:
                rows_by_index = {i: select_columns(row, columns) for i, row in
                                 read_saved_rows(options.out, fp, resume=True).items()}
                here["rows"] = _write_output(options, columns, prep, rows_by_index, fp)

        world.agree(merge)
    return RunResult(here["options"], here.get("rows", []), prep, n_resumed=len(done),
                     rank=world.rank, world_size=world.size)


def _score_into(checkpoint, options: RunOptions, columns: dict, samples, rows_by_index: dict
                ) -> None:
    """Score the ``samples`` not in ``rows_by_index`` into it, each batch appended durably
    to ``checkpoint`` (sidecars already checked) before it counts."""
    from sqsd_fast.io.writers import select_columns
    scorer = load_scorer(options)
    checkpoint.open()
    try:
        for batch_rows in _iterate(scorer, options, samples, frozenset(rows_by_index)):
            fresh = [select_columns(r, columns) for r in batch_rows
                     if int(r["index"]) not in rows_by_index]
            checkpoint.append(fresh)
            for r in fresh:
                rows_by_index[r["index"]] = r
    finally:
        checkpoint.close()
        if not checkpoint.holds_rows():
            checkpoint.finish()   # nothing completed: nothing to resume, no trap on retry


def _check_saved_indices(done: dict, prep: Prepared, out: str) -> None:
    stray = sorted(set(done) - {s.index for s in prep.samples})
    if stray:
        raise ValueError(f"the resume files beside {out} hold rows for indices not in this run "
                         f"(e.g. {stray[0]}); delete them to start over")


def _write_output(options: RunOptions, columns: dict, prep: Prepared, rows_by_index: dict,
                  fp: dict) -> list[dict]:
    """Rank, write ``out`` and its run record, delete the sidecars; the rows written."""
    from sqsd_fast.io.checkpoint import delete_sidecars, write_run_record
    from sqsd_fast.io.writers import write_rows
    from sqsd_fast.ranking import add_ranks
    missing = sorted({s.index for s in prep.samples} - set(rows_by_index))
    if missing:
        raise ValueError(f"the scorer returned no row for {len(missing)} samples (first: "
                         f"index {missing[0]}); completed rows are kept, rerun with --resume")
    rows = [rows_by_index[s.index] for s in prep.samples]       # input order
    if "rank" in columns:
        add_ranks(rows, options.SCORE_COLUMN)
    write_rows(options.out, rows, columns)
    write_run_record(options.out, fp, len(rows))
    delete_sidecars(options.out)
    return rows


def _launch_view(options: RunOptions, prep: Prepared, fp: dict) -> dict:
    """What must be the same on every rank: the options as given (not how they are shown)
    and what the data turned out to be; compared across ranks before anything is scored."""
    view = {name: value for name, value in options.to_dict().items()
            if name not in ("quiet", "no_progress")}
    view["n_samples"] = len(prep.samples)
    data = fp.get("data")
    view["data_digest"] = data.get("digest") if isinstance(data, dict) else data
    return view


def _option_labels(options: RunOptions) -> dict[str, str]:
    labels = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(options)}
    labels.update(n_samples="the number of samples read from --data",
                  data_digest="the content of --data")
    return labels


def _iterate(scorer, options: RunOptions, samples, skip):
    from sqsd_fast.scoring.token_budget import resolve_max_tokens
    holder = getattr(scorer, "engine", None) or getattr(scorer, "stats", None)
    model = getattr(holder, "model", None)     # for a GPU's default budget (none: CPU's)
    max_tokens = resolve_max_tokens(options.max_tokens, model, options.device, samples)
    common = dict(metric=options.metric, batch_size=options.batch_size, max_tokens=max_tokens,
                  skip_indices=skip, progress=options.progress)
    if isinstance(options, ScoreOptions):
        return scorer.iter_score(samples, **common)
    return scorer.iter_project(samples, state="danger_state", direction="danger", **common)


# ------------------------------------------------------------------------- checks


def check_paths(options: RunOptions) -> None:
    """Refuse a bad --out, --device, --model or adapter path before anything is loaded."""
    check_output_path(options.out, options.data)
    check_device_available(options.device)
    for name, path in options.adapters().items():
        check_adapter_path("--" + name.replace("_", "-"), path)
    for name in options.PATH_FIELDS:   # other input files a command names (e.g. anchors)
        path = getattr(options, name, None)
        if name not in ("model", "tokenizer") and path is not None and not Path(path).exists():
            raise ValueError(f"--{name.replace('_', '-')} {path}: file not found")
    check_model_path(options.model)


def check_device_available(device: str) -> None:
    import torch
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device visible"
        raise ValueError(f"--device {device}: CUDA is not available here ({build}); use --device cpu")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")


def check_output_path(out: str, data: str) -> None:
    from sqsd_fast.io.writers import output_format
    output_format(out)
    p = Path(out)
    if p.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name such as "
                         f"{p / 'scores.jsonl'}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"--out {out}: the directory {p.parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: the directory {parent} is not writable")
    if Path(data).exists() and p.exists() and p.resolve() == Path(data).resolve():
        raise ValueError(f"--out {out} is the input data file; choose another output name")


def check_adapter_path(option: str, path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{option} {path}: directory not found")
    if not p.is_dir() or not (p / "adapter_config.json").is_file():
        raise ValueError(f"{option} {path}: not a LoRA adapter directory (no "
                         f"adapter_config.json; save one with peft's save_pretrained)")


def check_model_path(path: str) -> None:
    from sqsd_fast.data.records import looks_like_local_path
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".gguf":
        return  # converted (once, cached) when the model is loaded
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise ValueError(f"--model {path}: not a model directory (no config.json) or .gguf file")
    elif looks_like_local_path(path):
        raise ValueError(f"--model {path}: directory not found")
    else:
        check_hub_reachable(path)


def check_hub_reachable(model_id: str, timeout: float = 3.0) -> None:
    """A hub id that is not in the local cache needs the hub: say at once when it cannot be
    reached, instead of after a minute of retries blamed on the tokenizer."""
    from huggingface_hub import constants, try_to_load_from_cache
    cached = try_to_load_from_cache(model_id, "config.json")
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"--model {model_id}: not a local directory, not in the Hugging Face "
                         f"cache, and HF_HUB_OFFLINE is set; give a local model directory")
    import socket
    import threading
    from urllib.parse import urlparse
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    reached = []

    def probe():  # in a thread: a DNS lookup has no timeout of its own
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if not reached:
        raise ValueError(f"--model {model_id}: not a local directory, and the Hugging Face hub "
                         f"({host}) cannot be reached to download it; give a local model "
                         f"directory (or check the network)")


# --------------------------------------------------------------------- preparation


def prepare(options: RunOptions) -> Prepared:
    """Read, normalize and tokenize the records of ``options.data``."""
    from sqsd_fast.data.records import load_raw, normalize_rows
    from sqsd_fast.data.batching import check_token_budget
    from sqsd_fast.data.tokenize import count_truncated, load_tokenizer, tokenize_records
    raw = load_raw(options.data, split=options.data_split)
    rows = raw.rows if options.limit is None else raw.rows[:options.limit]
    records = normalize_rows(rows, options.field_names(), raw.name)
    from sqsd_fast.models import resolve_model
    source = options.tokenizer or resolve_model(options.model, progress=options.progress)
    tokenizer = load_tokenizer(source, option="--tokenizer")
    samples = tokenize_records(records, tokenizer, max_length=options.max_length)
    check_token_budget(samples, options.max_tokens)     # before any model is loaded
    return Prepared(raw, records, samples, count_truncated(samples), tokenizer)


def fingerprint(options: RunOptions, prep: Prepared) -> dict:
    """What identifies a run's results: every option that can change a score (paths by
    content), the command and the number of samples."""
    return options.fingerprint(whole_file="data", whole_file_is_local=prep.raw.path is not None,
                               n_samples=len(prep.samples))


# ------------------------------------------------------------------------- loading


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


def load_scorer(options: RunOptions):
    """The scorer for ``options``: an SQSDScorer, or what the options' own ``load_scorer``
    gives (baseline); tests replace this to avoid a real model."""
    own = getattr(options, "load_scorer", None)
    if own is not None:
        return own()
    from sqsd_fast.scoring.scorer import SQSDScorer
    common = dict(dtype=options.dtype, device=options.device, backend=options.backend)
    with quiet_libraries():
        if isinstance(options, ScoreOptions):
            return SQSDScorer.from_pretrained(
                options.model, danger_state=options.danger_state,
                danger_direction=options.danger_direction,
                safety_state=options.safety_state or options.safety_direction,
                safety_direction=options.safety_direction,
                safety_state_scaling=options.safety_state_scaling,
                more_danger_directions=options.more_danger_directions(), **common)
        return SQSDScorer.from_pretrained(options.model, danger_state=options.state,
                                          danger_direction=options.direction, **common)
