"""Score a data file to an output file, resumably: the run the CLI and Python share.

    from sqsd_fast.app.pipeline import score_file
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
a caller's ``torch.distributed`` group: see ``sqsd_fast.app.distributed``), every process
calls :func:`run` with the same options; each scores its token-balanced share of the
samples into its own sidecars, and rank 0 merges them into ``out``. Only rank 0's result
holds the rows.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sqsd_fast.app import distributed
from sqsd_fast.app.run_protocol import RunScorer, SQSDRun
from sqsd_fast.data.batching import check_token_budget
from sqsd_fast.data.records import load_raw, normalize_rows
from sqsd_fast.data.tokenize import count_truncated, load_tokenizer, tokenize_records
from sqsd_fast.influence.anchor_direction import (
    anchors_in_data,
    check_direction_model,
    model_digest,
    model_vocab_size,
    read_anchor_samples,
)
from sqsd_fast.influence.anchored import build_anchored_inputs
from sqsd_fast.influence.baselines import load_baseline_scorer
from sqsd_fast.io.checkpoint import (
    ResumeCheckpoint,
    delete_sidecars,
    has_saved_rows,
    path_fingerprint,
    rank_part,
    read_run_record,
    read_saved_rows,
    sidecar_parts,
    write_run_record,
)
from sqsd_fast.io.lock import output_lock
from sqsd_fast.io.ranking import add_ranks, sort_scored
from sqsd_fast.io.writers import read_rows, select_columns, write_rows
from sqsd_fast.models import resolve_model
from sqsd_fast.models.quantized import check_bitsandbytes
from sqsd_fast.models.quiet import quiet_libraries
from sqsd_fast.options import BaselineOptions, ProjectOptions, RunOptions, ScoreOptions
from sqsd_fast.options.checks import check_adapter_path, check_device_available, check_model_path, check_output_path
from sqsd_fast.scoring.scorer import SQSDScorer


@dataclass
class Prepared:
    """The data of a run, read and tokenized."""

    raw: Any                 # sqsd_fast.data.RawData, its rows dropped once normalized
    records: list            # list[Record]
    samples: list            # list[TokenizedSample]
    n_truncated: int
    tokenizer: Any
    # {"side", "anchor", "data_index"} of every anchor that is also a scored sample (the
    # anchor files are read and checked here, before any model loads)
    anchors_in_data: list = dataclasses.field(default_factory=list)


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

    @property
    def failure(self) -> str | None:
        """Why the run failed although it finished: no sample could be scored; else None."""
        if not self.is_main or sort_scored(self.rows, self.column):
            return None
        statuses = sorted({r["status"] for r in self.rows})
        return (f"no sample could be scored (status: {', '.join(statuses)}); {self.options.out} lists "
                f"the status of each")


def score_file(options: ScoreOptions | None = None, /, **kwargs) -> RunResult:
    """SQSD scores of every record of ``data`` written to ``out`` (see :class:`ScoreOptions`)."""
    return run(options if options is not None else ScoreOptions(**kwargs))


def project_file(options: ProjectOptions | None = None, /, **kwargs) -> RunResult:
    """One projection per record of ``data`` written to ``out`` (see :class:`ProjectOptions`)."""
    return run(options if options is not None else ProjectOptions(**kwargs))


def baseline_file(options: BaselineOptions | None = None, /, **kwargs) -> RunResult:
    """One baseline score per record of ``data`` written to ``out`` (see :class:`BaselineOptions`
    and ``sqsd_fast.influence.baselines``); same checks, sidecars, lock and run record as
    :func:`score_file`."""
    return run(options if options is not None else BaselineOptions(**kwargs))


def output_columns(options: RunOptions) -> dict[str, str]:
    """The columns ``options``' run writes (known before any model is loaded)."""
    return options.columns()


def run(options: RunOptions) -> RunResult:
    """The resumable run of ``options`` (a :class:`ScoreOptions` or :class:`ProjectOptions`);
    on every process of a multi-process run alike."""
    with distributed.world_of_run(options.device) as world:
        return _run_in(world, options, output_columns(options))


def _run_in(world: distributed.World, options: RunOptions, columns: dict) -> RunResult:
    """The one sequence of a run, alone or as one rank of several: each step that can fail
    runs on every rank through ``world.agree``, so all ranks stop together, naming the rank
    that failed (alone, a step's error is raised as it is)."""
    steps = _RunSteps(world, options, columns)
    world.agree(steps.check)
    if steps.several:
        distributed.check_shared_directory(world, Path(options.out).absolute().parent)
    with ExitStack() as locks:
        views = world.agree(lambda: steps.read(locks))
        if steps.several:
            distributed.check_same_options(world, [view for view, _ in views], _option_labels(options))
        steps.fp = views[0][1]   # rank 0's names the inputs in every rank's sidecars and the record
        indices, finished = world.agree(steps.saved)[0]
        done = set(indices)
        steps.say_resumed(done, finished)
        if not finished:
            # The rows still missing are split, not the whole set: a resume shares what a dead
            # rank left among all ranks, and any world size can continue any other's run.
            todo = [s for s in steps.prep.samples if s.index not in done]
            mine = distributed.shard_samples(todo, world.size, world.rank)
            try:
                world.agree(lambda: steps.score(mine))
            except distributed.DistributedRunError as exc:
                if not has_saved_rows(options.out):
                    raise
                raise distributed.DistributedRunError(
                    f"{exc}; completed batches are kept, rerun the same command with --resume",
                    reported_elsewhere=exc.reported_elsewhere) from exc.__cause__
            world.agree(steps.merge)
    return RunResult(steps.options, steps.rows or [], steps.prep, n_resumed=len(done),
                     rank=world.rank, world_size=world.size)


class _RunSteps:
    """The steps of :func:`_run_in` on this process, and what each keeps for the next."""

    def __init__(self, world: distributed.World, options: RunOptions, columns: dict):
        self.world, self.given, self.columns = world, options, columns
        self.several = world.size > 1
        self.part = rank_part(world.rank, world.size) if self.several else None   # this rank's sidecars
        self.options = options   # as this process runs them (its own --device on several)
        self.prep: Prepared | None = None
        self.fp: dict | None = None
        self.rows: list[dict] | None = None   # what rank 0 wrote (or found finished)

    def check(self) -> None:
        if self.several:
            check_device_available(self.given.device)   # before it is mapped to this rank's GPU
            self.options = dataclasses.replace(
                self.given, device=distributed.rank_device(self.given.device, self.world),
                no_progress=self.given.no_progress or not self.world.is_main)
        check_paths(self.options)
        if self.several and self.world.local_rank == 0:   # a .gguf is converted once per machine
            resolve_model(self.given.model, progress=self.options.progress)

    def read(self, locks: ExitStack):
        out = self.given.out
        if self.several:
            locks.enter_context(output_lock(out, part=self.part))
        if self.world.is_main:   # also keeps out another run, or a launch of another size
            locks.enter_context(output_lock(out))
        self.prep = prepare(self.options)
        fp = fingerprint(self.given, self.prep)
        return _launch_view(self.given, self.prep, fp), fp

    def saved(self):
        """On rank 0: the indices already scored (every rank's sidecars, of this or an
        earlier world size), and whether the output is this very run, finished."""
        if not self.world.is_main:
            return None
        options = self.given
        self.rows = _finished_rows(options, self.columns, self.fp) if options.resume else None
        if self.rows is not None:   # --resume of a finished run: its result, no rescoring
            return sorted(row["index"] for row in self.rows), True
        done = read_saved_rows(options.out, self.fp, options.resume)   # refuses before anything is written
        _check_saved_indices(done, self.prep, options.out)
        return sorted(done), False

    def say_resumed(self, done: set, finished: bool) -> None:
        options = self.given
        if not self.world.is_main or options.quiet or not (finished or (options.resume and done)):
            return
        if finished:
            print(f"resuming: {options.out} is already finished ({len(done)} rows); nothing to score",
                  file=sys.stderr)
        else:
            print(f"resuming: {len(done)} of {len(self.prep.samples)} samples already scored", file=sys.stderr)

    def score(self, mine: list) -> None:
        if mine:   # a rank left without samples writes nothing and waits for the others
            _score_into(ResumeCheckpoint(self.given.out, self.fp, part=self.part), self.options, self.columns,
                        mine)

    def merge(self) -> None:
        if self.world.is_main:
            rows_by_index = {i: select_columns(row, self.columns) for i, row in
                             read_saved_rows(self.given.out, self.fp, resume=True).items()}
            self.rows = _write_output(self.given, self.columns, self.prep, rows_by_index, self.fp)


def _score_into(checkpoint, options: RunOptions, columns: dict, samples) -> None:
    """Score ``samples``, each batch appended durably to ``checkpoint`` (sidecars already
    checked) before it counts."""
    scorer = run_scorer(options, load_scorer(options))
    checkpoint.open()
    try:
        for batch_rows in _iterate(scorer, options, samples, frozenset()):
            checkpoint.append([select_columns(r, columns) for r in batch_rows])
    finally:
        checkpoint.close()
        if not checkpoint.holds_rows():
            checkpoint.finish()   # nothing completed: nothing to resume, no trap on retry


def _finished_rows(options: RunOptions, columns: dict, fp: dict) -> list[dict] | None:
    """The rows of ``out`` when it is this very run, finished (its run record holds the same
    fingerprint and no sidecar is left), typed as the run wrote them; else None."""
    if not Path(options.out).is_file() or sidecar_parts(options.out):
        return None
    record = read_run_record(options.out)
    if record is None or record.get("fingerprint") != json.loads(json.dumps(fp, default=str)):
        return None
    cast = {"int": int, "float": float, "str": str}
    return [{name: (None if row.get(name) is None else cast[kind](row[name])) for name, kind in columns.items()}
            for row in read_rows(options.out)]


def _check_saved_indices(done: dict, prep: Prepared, out: str) -> None:
    stray = sorted(set(done) - {s.index for s in prep.samples})
    if stray:
        raise ValueError(f"the resume files beside {out} hold rows for indices not in this run "
                         f"(e.g. {stray[0]}); delete them to start over")


def _write_output(options: RunOptions, columns: dict, prep: Prepared, rows_by_index: dict,
                  fp: dict) -> list[dict]:
    """Rank, write ``out`` and its run record, delete the sidecars; the rows written."""
    missing = sorted({s.index for s in prep.samples} - set(rows_by_index))
    if missing:
        raise ValueError(f"the scorer returned no row for {len(missing)} samples (first: "
                         f"index {missing[0]}); completed rows are kept, rerun with --resume")
    rows = [rows_by_index[s.index] for s in prep.samples]       # input order
    if "rank" in columns:
        add_ranks(rows, options.SCORE_COLUMN)
    write_rows(options.out, rows, columns)
    about = {}
    if options.sources():
        about = {"inputs": options.sources(), "anchors_in_data": prep.anchors_in_data}
    write_run_record(options.out, fp, len(rows), **about)
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


def _iterate(scorer: RunScorer, options: RunOptions, samples, skip):
    # max_tokens None: the scorer's device default (engine/token_budget.py), as in Python.
    return scorer.iter_rows(samples, batch_size=options.batch_size, max_tokens=options.max_tokens,
                            skip_indices=skip, progress=options.progress)


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
    if options.quantization():
        check_bitsandbytes(f"--load-in-{options.quantization()}")
    directions = {"--danger-direction": getattr(options, "danger_direction", None),
                  "--safety-direction": getattr(options, "safety_direction", None),
                  "--direction": getattr(options, "direction", None)}
    if any(directions.values()):   # one made from anchors on another model is refused
        digest = model_digest(options.model)
        for option, path in directions.items():
            if path is not None:
                check_direction_model(path, digest, option)


# --------------------------------------------------------------------- preparation


def prepare(options: RunOptions) -> Prepared:
    """Read, normalize and tokenize the records of ``options.data``."""
    raw = load_raw(options.data, split=options.data_split)
    rows = raw.rows if options.limit is None else raw.rows[:options.limit]
    records = normalize_rows(rows, options.field_names(), raw.name)
    # The records hold what a run needs; the rows as read would double the memory of a
    # large set (docs/DEVELOPING.md, bench_large_data.py).
    raw = dataclasses.replace(raw, rows=[])
    del rows
    source = options.tokenizer or resolve_model(options.model, progress=options.progress)
    tokenizer = load_tokenizer(source, option="--tokenizer")
    samples = tokenize_records(records, tokenizer, max_length=options.max_length)
    check_token_budget(samples, options.max_tokens)     # before any model is loaded
    prep = Prepared(raw, records, samples, count_truncated(samples), tokenizer)
    _prepare_anchors(options, prep, source)
    return prep


def _prepare_anchors(options: RunOptions, prep: Prepared, model_dir) -> None:
    """Read and check the anchor files of the run's directions (before the model loads)
    and name every anchor that is also a sample of --data."""
    files = options.anchor_files()
    option_of = options.anchor_options()
    for side, path in files.items():
        anchors = read_anchor_samples(path, option=option_of[side], fields=options.field_names(),
                                      tokenizer=prep.tokenizer, max_length=options.max_length,
                                      response_tokens=options.anchor_response_tokens,
                                      vocab_size=model_vocab_size(model_dir))
        for anchor, sample in anchors_in_data(anchors, prep.samples):
            prep.anchors_in_data.append({"side": side, "anchor": anchor, "data_index": sample})
    if prep.anchors_in_data and not options.quiet:
        first = prep.anchors_in_data[0]
        print(f"warning: {len(prep.anchors_in_data)} anchor(s) are also samples of --data {options.data} "
              f"(e.g. {option_of[first['side']]} anchor {first['anchor']} = record {first['data_index']}); "
              "they are scored against a direction they helped make (listed in the output's .meta.json)",
              file=sys.stderr)


def fingerprint(options: RunOptions, prep: Prepared) -> dict:
    """What identifies a run's results: every option that can change a score (paths by
    content), the command and the number of samples."""
    extra = {}
    if options.ANCHOR_SIDES:   # the shipped sets too: a new package version may change them
        extra["anchor_files"] = {side: path_fingerprint(path)["digest"]
                                 for side, path in options.anchor_files().items()}
    return options.fingerprint(whole_file="data", whole_file_is_local=prep.raw.path is not None,
                               n_samples=len(prep.samples), **extra)


# ------------------------------------------------------------------------- loading


def load_scorer(options: RunOptions):
    """The scorer of ``options``' command (:func:`_load_scorer`), with gradient checkpointing
    when asked. The one place a model is loaded; tests replace it."""
    scorer = _load_scorer(options)
    if options.gradient_checkpointing and hasattr(scorer, "use_checkpointing"):
        scorer.use_checkpointing(True)
    return scorer


def _load_scorer(options: RunOptions):
    """The library scorer of ``options``' command (tests replace :func:`load_scorer` with an
    SQSDScorer-shaped stand-in, ``sqsd_fast.testing.FakeScorer``)."""
    return _scoring(options)[0](options)


def _load_sqsd_scorer(options: RunOptions):
    """An ``SQSDScorer`` (score, project) at the given state and directions; where the state
    is the cached fresh initialisation or directions come from anchors (built at that state,
    cached), the model is loaded once, for both."""
    with quiet_libraries():
        if not options.anchor_files() and options.scoring_state() is not None:
            return SQSDScorer.from_pretrained(
                options.model, dtype=options.dtype, device=options.device, backend=options.backend,
                quantization=options.quantization(), **options.scorer_inputs(options.scoring_state(), {}))
        inputs = build_anchored_inputs(
            model=options.model, state=options.scoring_state(), anchors=_read_anchors_again(options),
            anchor_files=options.anchor_files(), fields=options.field_names(),
            max_length=options.max_length, response_tokens=options.anchor_response_tokens,
            dtype=options.dtype, device=options.device, backend=options.backend,
            batch_size=options.batch_size, max_tokens=options.max_tokens,
            tokenizer=options.tokenizer, progress=options.progress, announce=not options.quiet,
            gradient_checkpointing=options.gradient_checkpointing, quantization=options.quantization())
        return SQSDScorer.from_pretrained(inputs.model, backend=options.backend, tokenizer=inputs.tokenizer,
                                          **options.scorer_inputs(inputs.adapter, inputs.directions))


def _load_baseline_scorer(options: RunOptions):
    return load_baseline_scorer(options)


def _as_run_scorer(options: RunOptions, scorer) -> RunScorer:
    return SQSDRun(scorer, options)


def _baseline_is_a_run_scorer(options: RunOptions, scorer) -> RunScorer:
    return scorer


# Each scoring command: how its scorer is loaded and put behind the RunScorer protocol (the
# pipeline's one per-command choice; the options classes say the rest).
_SCORERS = {"score": (_load_sqsd_scorer, _as_run_scorer),
            "project": (_load_sqsd_scorer, _as_run_scorer),
            "baseline": (_load_baseline_scorer, _baseline_is_a_run_scorer)}


def _scoring(options: RunOptions):
    if options.COMMAND not in _SCORERS:
        raise ValueError(f"the pipeline runs {', '.join(_SCORERS)}, not {options.COMMAND!r}")
    return _SCORERS[options.COMMAND]


def _read_anchors_again(options: RunOptions) -> dict:
    """The run's anchor samples (read again where the scorer is loaded: ``load_scorer`` takes
    only the options, so that tests can stand in for it)."""
    files = options.anchor_files()
    if not files:
        return {}
    tokenizer = load_tokenizer(options.tokenizer or resolve_model(options.model, progress=False), option="--tokenizer")
    option_of = options.anchor_options()
    return {side: read_anchor_samples(path, option=option_of[side], fields=options.field_names(),
                                      tokenizer=tokenizer, max_length=options.max_length,
                                      response_tokens=options.anchor_response_tokens)
            for side, path in files.items()}


def run_scorer(options: RunOptions, scorer) -> RunScorer:
    """``scorer`` (what :func:`load_scorer` gave) behind the :class:`RunScorer` protocol."""
    return _scoring(options)[1](options, scorer)


# ------------------------------------------------------------------------- summary


def format_summary(result: RunResult) -> str:
    """The run in a few lines: counts by status, inputs, quantiles, the top and bottom rows."""

    options, rows, column = result.options, result.rows, result.column
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines = [f"sqsd-fast {options.COMMAND}: {len(rows)} samples from {options.data} -> "
             f"{options.out} (metric {options.metric})",
             "  status:  " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    lines += [f"  {name.replace('_', ' ')}: {what}"
              for name, what in options.sources().items()]
    if result.prepared.anchors_in_data:
        lines.append(f"  anchors that are also samples of --data: {len(result.prepared.anchors_in_data)} "
                     f"(listed in {options.out}.meta.json)")
    lines.append(f"  truncated to --max-length {options.max_length}: {result.prepared.n_truncated}")
    scored = sort_scored(rows, column)
    if not scored:
        return "\n".join([*lines, "  no sample could be scored"])
    qs = np.quantile(np.array([r[column] for r in scored]), [0.0, 0.25, 0.5, 0.75, 1.0])
    lines.append(f"  {column}:  min {qs[0]:+.4g}  25% {qs[1]:+.4g}  median {qs[2]:+.4g}  "
                 f"75% {qs[3]:+.4g}  max {qs[4]:+.4g}")
    by_index = {r.index: r for r in result.prepared.records}
    k = min(3, len(scored))
    lines.append(f"  highest {column}" + (" (riskiest first):" if column == "sqsd" else ":"))
    lines += [_summary_line(r, column, by_index, len(scored)) for r in scored[:k]]
    if len(scored) > k:
        lines.append(f"  lowest {column}:")
        lines += [_summary_line(r, column, by_index, len(scored)) for r in scored[max(k, len(scored) - k):]]
    return "\n".join(lines)


def _summary_line(row: dict, column: str, by_index: dict, n: int) -> str:
    rank = row.get("rank")
    rank_text = f"#{rank:<{len(str(n))}} " if rank is not None else ""
    record = by_index.get(row["index"])
    snippet = record.snippet(60) if record is not None else ""
    return f"    {rank_text}{row[column]:+.4f}  [index {row['index']}]  {snippet}"
