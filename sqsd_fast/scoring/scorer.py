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
from typing import Iterable, Iterator

from sqsd_fast.scoring.adapters import (
    attach_state,
    load_base_model,
    load_direction,
    set_state_scaling,
    state_modules,
)
from sqsd_fast.data.tokenize import count_response_tokens
from sqsd_fast.choices import METRICS, check_choice
from sqsd_fast.scoring.engine import BatchProjection, ProjectionEngine

DANGER_STATE, SAFETY_STATE = "danger_state", "safety_state"
DANGER, SAFETY = "danger", "safety"


class SQSDScorer:
    """Scores samples with one model in memory and up to two LoRA states and directions.

    Build it with :meth:`from_pretrained` (paths or an in-memory model) or
    :meth:`from_peft_model` (a ``PeftModel`` that already holds the state adapters).
    """

    def __init__(self, engine: ProjectionEngine, *, states: dict[str, str], tokenizer=None):
        self.engine = engine
        self.states = dict(states)  # logical state name -> adapter name on the model
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, model, *, danger_state, danger_direction, safety_state=None, safety_direction=None,
                        safety_state_scaling=1.0, danger_state_scaling=None, dtype="float32", device=None,
                        backend="auto", tokenizer=None) -> "SQSDScorer":
        """Loads the base model once and the LoRA states on it as named adapters.

        Args:
            model: base model directory or hub id (loaded with ``dtype``), or an in-memory
                transformers model / ``PeftModel`` (wrapped in place; dtype kept). On a
                ``PeftModel``, a state or direction may also name an adapter it holds.
            danger_state: LoRA adapter directory of the state danger projections are taken
                at (the authors' "initial" LoRA).
            danger_direction: LoRA adapter directory of the danger direction (read only).
            safety_state: adapter directory of the safety state; defaults to
                ``safety_direction`` (the authors use the safety adapter as its own state).
            safety_direction: LoRA adapter directory of the safety direction. Without it,
                only :meth:`project` / :meth:`iter_project` with the danger pair work.
            safety_state_scaling: LoRA scaling of the safety state (the authors: 1.0;
                None keeps alpha/r). danger_state_scaling: same for the danger state
                (default None: alpha/r).
            dtype: "float32" | "bfloat16" | "float16" for a model loaded from a path.
            device: where the model runs ("cpu", "cuda", "cuda:1", ...). Default: "cpu" for a
                model loaded from a path, the model's own device for an in-memory model.
            backend: statistics backend ("auto", "reference", "cpp", "triton").
            tokenizer: optional; loaded from ``model`` when it is a directory.

        Raises:
            ValueError naming the adapter directory: missing files, not LoRA, LoRA on
            embeddings or unsupported layers, an adapter for another base model, or a
            direction whose LoRA modules differ from its state's.
        """
        from peft import PeftModel

        if safety_state is None:
            safety_state = safety_direction
        if safety_state is not None and safety_direction is None:
            raise ValueError("safety_state was given without safety_direction; give both (or neither)")
        base = load_base_model(model, dtype=dtype, device=device)
        if tokenizer is None and isinstance(model, (str, os.PathLike)):
            tokenizer = _load_tokenizer(os.fspath(model))

        existing = set(base.peft_config) if isinstance(base, PeftModel) else set()
        states = {}
        peft_model = base
        for logical, source, scaling in ((DANGER_STATE, danger_state, danger_state_scaling),
                                         (SAFETY_STATE, safety_state, safety_state_scaling)):
            if source is None:
                continue
            if isinstance(source, str) and source in existing:
                adapter = source
                state_modules(peft_model, adapter)
            else:
                adapter = _free_name(peft_model, logical)
                peft_model = attach_state(peft_model, source, adapter)
            if scaling is not None and adapter == states.get(DANGER_STATE):
                raise ValueError("the danger and safety states are the same loaded adapter but need different "
                                 "scalings; pass them as directories so each is loaded on its own")
            set_state_scaling(peft_model, adapter, scaling)
            states[logical] = adapter
        peft_model.to(next(base.parameters()).device)  # adapters join the base model's device

        directions = {DANGER: load_direction(danger_direction, peft_model)}
        if safety_direction is not None:
            directions[SAFETY] = load_direction(safety_direction, peft_model)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        engine = ProjectionEngine(peft_model, directions, pad_token_id=pad or 0, backend=backend)
        scorer = cls(engine, states=states, tokenizer=tokenizer)
        for logical, direction in ((DANGER_STATE, DANGER), (SAFETY_STATE, SAFETY)):
            if logical in states:
                engine.prepare(states[logical], direction)  # fail now on mismatched modules
        return scorer

    @classmethod
    def from_peft_model(cls, peft_model, *, danger_state: str, danger_direction, safety_state: str | None = None,
                        safety_direction=None, safety_state_scaling=1.0, backend="auto",
                        tokenizer=None) -> "SQSDScorer":
        """Scores with an in-memory ``PeftModel`` whose state adapters are already loaded.

        ``danger_state`` / ``safety_state`` name adapters on ``peft_model``; directions are
        adapter names on it or adapter directories. The safety state's scaling is
        overridden on the model (``safety_state_scaling``, None keeps it). The model is put
        in eval mode and its parameters are frozen.
        """
        return cls.from_pretrained(
            peft_model, danger_state=danger_state, danger_direction=danger_direction,
            safety_state=safety_state, safety_direction=safety_direction,
            safety_state_scaling=safety_state_scaling, device=next(peft_model.parameters()).device,
            backend=backend, tokenizer=tokenizer,
        )

    # ------------------------------------------------------------------ scoring

    def iter_project(self, samples, *, state: str = DANGER_STATE, direction: str = DANGER, metric: str = "cosine",
                     batch_size: int = 8, skip_indices=frozenset(), progress: bool = True) -> Iterator[list[dict]]:
        """Projections of each sample's induced update at ``state`` onto ``direction``.

        Args:
            samples: ``TokenizedSample`` objects (``sqsd_fast.data.tokenize_records``), or
                dicts with ``input_ids`` and ``labels`` (their list position is the index).
            state: "danger_state" or "safety_state"; direction: "danger" or "safety".
            metric: "cosine" (the paper's), "dot" or "projection" (dot / ||D||), each
                summed over LoRA modules.
            batch_size: samples per forward/backward (scores do not depend on it).
            skip_indices: sample indices not to score (e.g. already done on resume).

        Yields:
            One list of rows per batch, in batch order (length-bucketed, longest first):
            ``{"index", "proj", "n_tokens", "n_response_tokens", "status"}``; ``proj`` is
            None unless status is "ok".
        """
        adapter = self._state(state)
        metric = check_choice("metric", metric, METRICS)
        for batch in self._batches(samples, batch_size, skip_indices, progress):
            result = self.engine.project_batch(batch, adapter, direction)
            _warn_non_finite(result, state)
            values = result.total(metric).tolist()
            yield [
                {"index": s.index, "proj": _number(v, st), "n_tokens": len(s.input_ids),
                 "n_response_tokens": count_response_tokens(s.labels), "status": st}
                for s, v, st in zip(batch, values, result.status)
            ]

    def iter_score(self, samples, *, metric: str = "cosine", batch_size: int = 8, skip_indices=frozenset(),
                   progress: bool = True) -> Iterator[list[dict]]:
        """SQSD scores, batch by batch (same arguments as :meth:`iter_project`).

        Yields rows ``{"index", "danger_proj", "safety_proj", "sqsd", "n_tokens",
        "n_response_tokens", "status"}``; status is the danger projection's unless that is
        "ok" (then the safety projection's); numbers are None where not computable.
        """
        danger_adapter, safety_adapter = self._state(DANGER_STATE), self._state(SAFETY_STATE)
        metric = check_choice("metric", metric, METRICS)
        for batch in self._batches(samples, batch_size, skip_indices, progress):
            danger = self.engine.project_batch(batch, danger_adapter, DANGER)
            safety = self.engine.project_batch(batch, safety_adapter, SAFETY)
            _warn_non_finite(danger, DANGER_STATE)
            _warn_non_finite(safety, SAFETY_STATE)
            d_vals, s_vals = danger.total(metric).tolist(), safety.total(metric).tolist()
            rows = []
            for s, dv, sv, ds, ss in zip(batch, d_vals, s_vals, danger.status, safety.status):
                status = ds if ds != "ok" else ss
                dp, sp = _number(dv, ds), _number(sv, ss)
                rows.append({
                    "index": s.index, "danger_proj": dp, "safety_proj": sp,
                    "sqsd": dp - sp if status == "ok" else None,
                    "n_tokens": len(s.input_ids), "n_response_tokens": count_response_tokens(s.labels),
                    "status": status,
                })
            yield rows

    def project(self, samples, **kwargs) -> list[dict]:
        """All rows of :meth:`iter_project` (same arguments), in input order."""
        samples = _as_samples(samples)
        return _in_input_order(samples, self.iter_project(samples, **kwargs))

    def score(self, samples, **kwargs) -> list[dict]:
        """All rows of :meth:`iter_score` (same arguments), in input order."""
        samples = _as_samples(samples)
        return _in_input_order(samples, self.iter_score(samples, **kwargs))

    # ------------------------------------------------------------------ helpers

    def _state(self, state: str) -> str:
        if state not in self.states:
            known = ", ".join(self.states) or "none"
            raise ValueError(f"state {state!r} is not loaded (loaded: {known}); the safety state needs "
                             "safety_direction (and optionally safety_state) in from_pretrained")
        return self.states[state]

    def _batches(self, samples, batch_size, skip_indices, progress):
        from sqsd_fast.data.batching import length_bucketed_batches

        todo = [s for s in _as_samples(samples) if s.index not in skip_indices]
        batches = length_bucketed_batches(todo, batch_size)
        bar = _progress_bar(len(todo), progress)
        try:
            for batch in batches:
                yield batch
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()


class _Sample:
    """Minimal TokenizedSample stand-in for dict inputs."""

    __slots__ = ("index", "input_ids", "labels", "n_tokens")

    def __init__(self, index, input_ids, labels):
        self.index, self.input_ids, self.labels = index, list(input_ids), list(labels)
        self.n_tokens = len(self.input_ids)


def _as_samples(samples: Iterable) -> list:
    out = []
    for position, s in enumerate(samples):
        if isinstance(s, dict):
            if "input_ids" not in s or "labels" not in s:
                raise ValueError(f"sample {position}: a dict sample needs input_ids and labels "
                                 "(tokenize raw records with sqsd_fast.data.tokenize_records)")
            s = _Sample(s.get("index", position), s["input_ids"], s["labels"])
        elif not all(hasattr(s, a) for a in ("index", "input_ids", "labels")):
            raise TypeError(f"sample {position}: expected a TokenizedSample, got {type(s).__name__}")
        out.append(s)
    return out


def _in_input_order(samples: list, batches) -> list[dict]:
    position = {s.index: i for i, s in enumerate(samples)}
    rows = [row for batch in batches for row in batch]
    return sorted(rows, key=lambda r: position[r["index"]])


def _free_name(peft_model, name: str) -> str:
    taken = set(getattr(peft_model, "peft_config", {}))
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def _number(value: float, status: str):
    return float(value) if status == "ok" and math.isfinite(value) else None


def _warn_non_finite(result: BatchProjection, state: str) -> None:
    bad = [i for i, st in zip(result.indices, result.status) if st == "non_finite_gradient"]
    if bad:
        warnings.warn(f"sqsd_fast: non-finite loss or gradient at {state} for sample(s) {bad[:10]}"
                      f"{' ...' if len(bad) > 10 else ''}; they get no score (status non_finite_gradient)",
                      RuntimeWarning, stacklevel=3)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="samples", desc="sqsd", dynamic_ncols=True)


def _load_tokenizer(path: str):
    from sqsd_fast.data.tokenize import load_tokenizer

    try:
        return load_tokenizer(path)
    except ValueError:
        return None  # scoring works without one: padding ids are masked out
