"""``SQSDScorer``: the public Python API for SQSD scores and single projections.

    scorer = SQSDScorer.from_pretrained(
        "path/to/base", danger_state="lora_init", danger_direction="lora_unsafe",
        safety_direction="lora_safe")            # safety state defaults to the safety adapter
    rows = scorer.score(samples)                 # samples: TokenizedSample list (sqsd_fast.data)

``SQSD(z) = P_danger(z) - P_safe(z)`` (docs/METHOD.md §1): the danger projection is taken at the
danger state with the danger direction, the safety projection at the safety state (LoRA
scaling overridden, 1.0 by default as in the authors' code) with the safety direction.
Both use the same tokenization and the same length-bucketed batches.
"""

from __future__ import annotations

import math
import os
import warnings
from contextlib import contextmanager
from typing import Iterator, Mapping

from sqsd_fast.choices import DIRECTION_NAME, METRICS, check_choice
from sqsd_fast.data.batching import pad_id
from sqsd_fast.data.tokenize import count_response_tokens
from sqsd_fast.engine.batch_pass import progress_batches
from sqsd_fast.engine.directions import resolve_direction
from sqsd_fast.engine.loading import adapter_names, load_model_and_tokenizer, use_or_attach_state
from sqsd_fast.engine.samples import as_samples, check_fits_model
from sqsd_fast.engine.status import NON_FINITE_GRADIENT, OK
from sqsd_fast.io.ranking import add_ranks
from sqsd_fast.scoring.projection import BatchProjection, ProjectionEngine

DANGER_STATE, SAFETY_STATE = "danger_state", "safety_state"
DANGER, SAFETY = "danger", "safety"


class SQSDScorer:
    """Scores samples with one model in memory and up to two LoRA states and directions.

    Build it with :meth:`from_pretrained` (paths or an in-memory model) or
    :meth:`from_peft_model` (a ``PeftModel`` that already holds the state adapters).
    """

    def __init__(self, engine: ProjectionEngine, *, states: dict[str, str], tokenizer=None,
                 labels: dict[str, str] | None = None):
        self.engine = engine
        self.states = dict(states)  # logical state name -> adapter name on the model
        self.tokenizer = tokenizer
        self.labels = dict(labels or {})  # state / direction name -> what the user gave

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, model, *, danger_state, danger_direction, safety_state=None, safety_direction=None,
                        safety_state_scaling=1.0, danger_state_scaling=None, more_danger_directions=None,
                        dtype="float32", device=None, backend="auto", tokenizer=None,
                        quantization=None) -> "SQSDScorer":
        """Loads the base model once and the LoRA states on it as named adapters.

        Args:
            model: base model directory or hub id (loaded with ``dtype``), or an in-memory
                transformers model / ``PeftModel`` (wrapped in place; dtype kept). On a
                ``PeftModel``, a state or direction may also name an adapter it holds.
            danger_state: LoRA adapter directory of the state danger projections are taken
                at (the authors' "initial" LoRA).
            danger_direction: LoRA adapter directory of the danger direction (read only),
                or ``{module: (A_d, B_d)}`` factors in memory (any direction option; e.g.
                ``GradientStats.mean_update(anchors)``: the anchors' mean induced update).
            safety_state: adapter directory of the safety state; defaults to
                ``safety_direction`` (the authors use the safety adapter as its own state).
            safety_direction: LoRA adapter directory of the safety direction. Without it,
                only :meth:`project` / :meth:`iter_project` with the danger pair work.
            more_danger_directions: ``{name: adapter directory}`` of further danger
                directions (e.g. one per harm category), projected at the danger state in
                the same forward and backward as ``danger_direction``; score rows gain
                ``danger_proj_<name>`` and ``sqsd_<name>`` for each. Names: letters, digits,
                ``_``, ``.`` and ``-``.
            safety_state_scaling: LoRA scaling of the safety state (the authors: 1.0;
                None keeps alpha/r). danger_state_scaling: same for the danger state
                (default None: alpha/r).
            dtype: "float32" | "bfloat16" | "float16" for a model loaded from a path.
            device: where the model runs ("cpu", "cuda", "cuda:1", ...). Default: "cpu" for a
                model loaded from a path, the model's own device for an in-memory model.
            backend: statistics backend ("auto", "reference", "cpp", "triton").
            tokenizer: optional; loaded from ``model`` when it is a directory.
            quantization: "4bit" or "8bit" loads a model from a path with its linear layers
                quantized by bitsandbytes (QLoRA; the LoRA factors stay float): the scores
                are exact for that quantized model (sqsd_fast/models/quantized.py).

        Raises:
            ValueError naming the adapter directory: missing files, not LoRA, LoRA on
            embeddings or unsupported layers, an adapter for another base model, or a
            direction whose LoRA modules differ from its state's.
        """
        if safety_state is None:
            safety_state = safety_direction
        if safety_state is not None and safety_direction is None:
            raise ValueError("safety_state was given without safety_direction; give both (or neither)")
        base, tokenizer = load_model_and_tokenizer(model, dtype=dtype, device=device, tokenizer=tokenizer,
                                                   quantization=quantization)
        held = adapter_names(base)    # a state named by one of these is used, not loaded
        states, scalings, labels = {}, {}, {}
        peft_model = base
        for logical, source, scaling in ((DANGER_STATE, danger_state, danger_state_scaling),
                                         (SAFETY_STATE, safety_state, safety_state_scaling)):
            if source is None:
                continue
            labels[logical] = _label(logical, source)
            with _named(labels[logical]):
                peft_model, adapter = use_or_attach_state(peft_model, source, logical, held=held)
            if scaling is not None:
                if adapter in scalings and scalings[adapter] != float(scaling):
                    raise ValueError("the danger and safety states are the same loaded adapter but need different "
                                     "scalings; pass them as directories so each is loaded on its own")
                scalings[adapter] = float(scaling)
            states[logical] = adapter
            labels.setdefault(adapter, labels[logical])
        peft_model.to(next(base.parameters()).device)  # adapters join the base model's device

        directions = {}
        extra = [(f"{DANGER}_{name}", source, f"more_danger_directions[{name!r}]")
                 for name, source in _named_directions(more_danger_directions).items()]
        for logical, source, option in ((DANGER, danger_direction, "danger_direction"),
                                        (SAFETY, safety_direction, "safety_direction"), *extra):
            if source is None:
                continue
            labels[logical] = _label(option, source)
            with _named(labels[logical]):
                directions[logical] = resolve_direction(source, peft_model, where=labels[logical])
        engine = ProjectionEngine(peft_model, directions, pad_token_id=pad_id(tokenizer), backend=backend,
                                  scalings=scalings, labels=labels)
        scorer = cls(engine, states=states, tokenizer=tokenizer, labels=labels)
        for logical, dirs in ((DANGER_STATE, scorer.danger_directions), (SAFETY_STATE, (SAFETY,))):
            if logical in states:
                engine.prepare(states[logical], dirs)  # fail now on mismatched modules
        return scorer

    @property
    def model(self):
        """The ``PeftModel`` the scorer runs (its states are adapters on it)."""
        return self.engine.model

    def use_checkpointing(self, enabled: bool = True) -> "SQSDScorer":
        """Gradient checkpointing for every pass: each decoder layer's forward is recomputed
        in the backward and the capture hooks take x and h from it, so long samples need
        less memory; the scores do not change. A model that cannot is refused."""
        self.engine.runner.use_checkpointing(enabled)
        return self

    @property
    def danger_directions(self) -> tuple[str, ...]:
        """The engine's names of the danger directions: "danger", then "danger_<name>"."""
        return tuple(d for d in self.engine.directions if d == DANGER or d.startswith(DANGER + "_"))

    @property
    def more_danger_names(self) -> list[str]:
        """The user's names of the further danger directions, in the columns' order."""
        return [d[len(DANGER) + 1:] for d in self.danger_directions if d != DANGER]

    @classmethod
    def from_peft_model(cls, peft_model, *, danger_state: str, danger_direction, safety_state: str | None = None,
                        safety_direction=None, safety_state_scaling=1.0, more_danger_directions=None,
                        backend="auto", tokenizer=None) -> "SQSDScorer":
        """Scores with an in-memory ``PeftModel`` whose state adapters are already loaded.

        ``danger_state`` / ``safety_state`` name adapters on ``peft_model``; directions are
        adapter names on it or adapter directories. The model is borrowed, not changed:
        each scoring pass activates the state, freezes the parameters, sets eval mode and
        the safety state's scaling (``safety_state_scaling``, None keeps it), and puts the
        caller's active adapter, trainable flags, train/eval mode and scalings back when
        the pass ends. A state given as a directory (not an adapter name) is loaded onto
        the model as an extra adapter, which stays.
        """
        return cls.from_pretrained(
            peft_model, danger_state=danger_state, danger_direction=danger_direction,
            safety_state=safety_state, safety_direction=safety_direction,
            safety_state_scaling=safety_state_scaling, more_danger_directions=more_danger_directions,
            device=next(peft_model.parameters()).device, backend=backend, tokenizer=tokenizer,
        )

    # ------------------------------------------------------------------ scoring

    def iter_project(self, samples, *, state: str = DANGER_STATE, direction: str = DANGER, metric: str = "cosine",
                     batch_size: int | None = 8, max_tokens: int | None = None, skip_indices=frozenset(),
                     progress: bool = True) -> Iterator[list[dict]]:
        """Projections of each sample's induced update at ``state`` onto ``direction``.

        Args:
            samples: a data file path, ``Record``s (``sqsd_fast.data.read_records``; both are
                tokenized with the scorer's tokenizer), ``TokenizedSample``s
                (``sqsd_fast.data.tokenize_records``), or dicts with ``input_ids`` and
                ``labels`` (their list position is the index). Indices must be unique.
            state: "danger_state" or "safety_state", or the adapter name / directory given
                for it; direction: "danger" or "safety", or the adapter given for it.
            metric: "cosine" (the paper's), "dot" or "projection" (dot / ||D||), each
                summed over LoRA modules.
            batch_size: samples per forward/backward at most (scores do not depend on it).
            max_tokens: tokens per forward/backward at most, padding included (None: the
                device's default, as in the CLI: engine/token_budget.py); with both, a batch
                respects both. Scores do not depend on it.
            skip_indices: sample indices not to score (e.g. already done on resume).

        Yields:
            One list of rows per batch, in batch order (length-bucketed, longest first):
            ``{"index", "proj", "n_tokens", "n_response_tokens", "status"}``; ``proj`` is
            None unless status is "ok".
        """
        adapter, direction = self._state(state), self._direction(direction)
        metric = check_choice("metric", metric, METRICS)
        report = _NonFiniteReport()
        try:
            for batch in self._batches(samples, batch_size, max_tokens, skip_indices, progress, "project"):
                result = self.engine.project_batch(batch, adapter, direction)
                report.add(result, self.labels.get(adapter, adapter))
                values = result.total(metric).tolist()
                yield [
                    {"index": s.index, "proj": _number(v, st), "n_tokens": len(s.input_ids),
                     "n_response_tokens": count_response_tokens(s.labels), "status": st}
                    for s, v, st in zip(batch, values, result.status)
                ]
        finally:
            report.warn()

    def iter_score(self, samples, *, metric: str = "cosine", batch_size: int | None = 8,
                   max_tokens: int | None = None, skip_indices=frozenset(),
                   progress: bool = True) -> Iterator[list[dict]]:
        """SQSD scores, batch by batch (same arguments as :meth:`iter_project`).

        Yields rows ``{"index", "danger_proj", "safety_proj", "sqsd", "n_tokens",
        "n_response_tokens", "status"}`` (plus ``danger_proj_<name>``, ``sqsd_<name>`` per
        further danger direction); status is the danger projection's unless that is "ok"
        (then the safety projection's); numbers are None where not computable. Directions
        that share a state share its forward and backward pass: the danger directions
        always, the safety direction too when its state is the danger state's adapter.
        """
        danger_adapter, safety_adapter = self._state(DANGER_STATE), self._state(SAFETY_STATE)
        metric = check_choice("metric", metric, METRICS)
        report = _NonFiniteReport()
        try:
            batches = self._batches(samples, batch_size, max_tokens, skip_indices, progress, "sqsd")
            yield from self._score_batches(batches, metric, danger_adapter, safety_adapter, report)
        finally:
            report.warn()

    def _score_batches(self, batches, metric, danger_adapter, safety_adapter, report):
        danger_dirs = self.danger_directions
        passes = ({danger_adapter: danger_dirs + (SAFETY,)} if safety_adapter == danger_adapter
                  else {danger_adapter: danger_dirs, safety_adapter: (SAFETY,)})
        for batch in batches:
            results = {}
            for adapter, dirs in passes.items():
                results.update(self.engine.project_batch_many(batch, adapter, dirs))
            report.add(results[DANGER], self.labels.get(DANGER_STATE, DANGER_STATE))
            if safety_adapter != danger_adapter:
                report.add(results[SAFETY], self.labels.get(SAFETY_STATE, SAFETY_STATE))
            safety = results[SAFETY]
            s_vals = safety.total(metric).tolist()
            d_vals = {d: results[d].total(metric).tolist() for d in danger_dirs}
            rows = []
            for j, s in enumerate(batch):
                ds, ss = results[DANGER].status[j], safety.status[j]
                status = ds if ds != "ok" else ss
                sp = _number(s_vals[j], ss)
                row = {"index": s.index}
                for d in danger_dirs:
                    suffix = d[len(DANGER):]          # "" or "_<name>"
                    dp = _number(d_vals[d][j], ds)
                    row[f"danger_proj{suffix}"] = dp
                    if suffix == "":
                        row["safety_proj"] = sp
                    row[f"sqsd{suffix}"] = dp - sp if status == "ok" else None
                row.update({"n_tokens": len(s.input_ids),
                            "n_response_tokens": count_response_tokens(s.labels), "status": status})
                rows.append(row)
            yield rows

    def project(self, samples, **kwargs) -> list[dict]:
        """All rows of :meth:`iter_project` (same arguments), in input order."""
        samples = self._samples(samples)
        return _in_input_order(samples, self.iter_project(samples, **kwargs))

    def score(self, samples, **kwargs) -> list[dict]:
        """All rows of :meth:`iter_score` (same arguments), in input order, each with the
        ``rank`` the CLI writes (1 = highest sqsd among scored samples, None if unscored)."""

        samples = self._samples(samples)
        rows = _in_input_order(samples, self.iter_score(samples, **kwargs))
        add_ranks(rows, "sqsd")
        return rows

    # ------------------------------------------------------------------ helpers

    def _state(self, state) -> str:
        """The adapter name of a state given by its role, adapter name or directory."""
        if state in self.states:
            return self.states[state]
        for logical, adapter in self.states.items():
            if state == adapter or self.labels.get(logical, "").split(" ", 1)[-1] == _text(state):
                return adapter
        known = ", ".join(self.states) or "none"
        raise ValueError(f"state {state!r} is not loaded (loaded: {known}); the safety state needs "
                         "safety_direction (and optionally safety_state) in from_pretrained")

    def _direction(self, direction) -> str:
        """The engine's name of a direction given by its role or the adapter given for it."""
        if direction in self.engine.directions:
            return direction
        for logical in self.engine.directions:
            if self.labels.get(logical, "").split(" ", 1)[-1] == _text(direction):
                return logical
        raise ValueError(f"direction {direction!r} is not loaded (loaded: {', '.join(self.engine.directions)})")

    def _samples(self, samples) -> list:
        return as_samples(samples, self.tokenizer)

    def _batches(self, samples, batch_size, max_tokens, skip_indices, progress, what):
        todo = [s for s in self._samples(samples) if s.index not in skip_indices]
        check_fits_model(todo, self.engine.model)
        return progress_batches(todo, batch_size, progress, what, max_tokens, self.engine.model)


def _in_input_order(samples: list, batches) -> list[dict]:
    position = {s.index: i for i, s in enumerate(samples)}
    rows = [row for batch in batches for row in batch]
    return sorted(rows, key=lambda r: position[r["index"]])


def _label(option: str, source) -> str:
    """How an error message names a state or direction: the option and what was given."""
    if isinstance(source, Mapping):
        return f"{option} (factors in memory)"
    return f"{option} {os.fspath(source) if isinstance(source, os.PathLike) else source}"


@contextmanager
def _named(label: str):
    """Prefix a ValueError raised while loading an adapter with the option it came from."""
    try:
        yield
    except ValueError as exc:
        if str(exc).startswith(label):
            raise
        raise ValueError(f"{label}: {exc}") from None


def _named_directions(directions) -> dict:
    """``more_danger_directions`` checked: a mapping of column-safe names to sources."""
    if directions is None:
        return {}
    if not hasattr(directions, "items"):
        raise ValueError(f"more_danger_directions must map names to adapter directories, "
                         f"got {type(directions).__name__}")
    for name in directions:
        if not isinstance(name, str) or DIRECTION_NAME.fullmatch(name) is None:
            raise ValueError(f"more_danger_directions: name {name!r} must be letters, digits, "
                             f"'_', '.' or '-' (it becomes the columns danger_proj_<name>, "
                             f"sqsd_<name>)")
    return dict(directions)


def _number(value: float, status: str):
    return float(value) if status == OK and math.isfinite(value) else None


def _text(value) -> str:
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


class _NonFiniteReport:
    """Samples whose loss or gradient was not finite, per state: one warning per run, not
    one per batch."""

    def __init__(self):
        self.bad: dict[str, list] = {}

    def add(self, result: BatchProjection, state_label: str) -> None:
        bad = [i for i, st in zip(result.indices, result.status) if st == NON_FINITE_GRADIENT]
        if bad:
            self.bad.setdefault(state_label, []).extend(bad)

    def warn(self) -> None:
        for state_label, bad in self.bad.items():
            shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
            warnings.warn(f"non-finite loss or gradient at {state_label} for {len(bad)} sample(s) ({shown}); "
                          "they get no score (status non_finite_gradient)", RuntimeWarning, stacklevel=2)
        self.bad.clear()
