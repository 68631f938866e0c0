"""Online SQSD: every training sample scored at every step, from the step's own pass.

    from sqsd_fast.training.online import OnlineSQSD
    from sqsd_fast.training.sample_fields import SampleFields

    class MyTrainer(SampleFields, SFTTrainer):      # or Trainer; the mixin first
        pass
    trainer = MyTrainer(..., callbacks=[OnlineSQSD({"danger": "lora_unsafe",
                                                    "safety": "lora_safe"}, out_dir="online")])

The capture hooks of the scoring engine (``engine/taps.py``) sit on the trained LoRA's
modules for the whole run; each training micro-batch's backward hands them x, h, u, e and
the ``UpdateProjection`` reducer turns them into, per sample, ``<dW_m, D_m>`` and
``||dW_m||^2`` against each direction, where ``dW_m = -(G_B A + B G_A)`` is the update the
sample's share of the batch gradient induces at the current weights: with LoRA dropout as
it was applied, with gradient checkpointing (the recomputed forward is taken), in bf16.
No extra forward or backward runs. Per sample and direction, ``proj = sum_m cos(dW_m, D_m)``
as ``sqsd-fast score`` computes it (so at the same weights, without dropout, the two
agree), and ``sqsd = danger_proj - safety_proj`` when both directions are given.

The trainer must carry each row's identity: ``SampleFields`` keeps a ``sample_index``
column (the row's position in the dataset unless given) through the Trainer's column
pruning and TRL's collators, and hands each batch to this callback (``begin_batch``).
Rows go to ``out_dir/online_scores/`` as Parquet parts (step, epoch, sample_index,
n_tokens, <name>_proj..., sqsd) and per epoch, each sample's mean, to
``out_dir/online_summary.csv``. A resumed run first drops the rows of steps after its
checkpoint, which it replays (rows are written at every checkpoint and epoch end).
Parts carry the process's rank in their name, so that the ranks of a multi-process
Trainer would write apart; that case is NOT tested yet (``train-adapter`` itself runs in
one process and refuses a torchrun / accelerate launch of several).
"""
from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from sqsd_fast.engine.directions import resolve_direction
from sqsd_fast.engine.modules import lora_modules
from sqsd_fast.engine.reducers import BatchLayout, projection_reducer
from sqsd_fast.engine.status import OK, ran_status, safe_ratio
from sqsd_fast.engine.taps import TapSession
from sqsd_fast.influence import GradientStats
from sqsd_fast.io.atomic import atomic_path
from sqsd_fast.io.writers import read_rows, write_rows
from sqsd_fast.models.quiet import quiet_libraries
from sqsd_fast.training.drift import _check_directions, _trained_modules
from sqsd_fast.training.sample_fields import SAMPLE_INDEX

with quiet_libraries():   # bitsandbytes, imported with it where installed, announces optional kernels
    from transformers import TrainerCallback  # noqa: TID253 (subclassed at import; only training loads this)

SCORES_DIR = "online_scores"
SUMMARY_CSV = "online_summary.csv"


class OnlineSQSD(TrainerCallback):
    """Per-sample SQSD of every training step (see the module docstring).

    Args:
        directions: ``{name: direction}`` (a LoRA adapter directory, an adapter on the
            model, or ``{module: LoraFactors}``); "danger" and "safety" make ``sqsd``.
        out_dir: where the Parquet parts and the summary go (None: kept in memory only,
            ``rows``).
        backend: the statistics kernel backend.
        drop_top, drop_after: the online drop: from epoch ``drop_after + 1`` on, an epoch
            leaves out the ``drop_top`` fraction of samples with the highest running score
            (the mean of their online scores over the epochs before); needs ``SampleFields``,
            which then takes the training order from :meth:`make_sampler`. The left-out
            samples are printed and listed in ``dropped`` and ``out_dir/dropped.csv``.
    """

    def __init__(self, directions: Mapping[str, Any], *, out_dir: str | os.PathLike | None = None,
                 backend: str = "auto", drop_top: float | None = None, drop_after: int = 1):
        self.directions = _check_directions(directions)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.backend = backend
        self.rows: list[dict] = []          # every row of this run (also written to parts)
        self._buffer: list[dict] = []       # rows not yet written
        self._pending = None                # (reducer, sample indices, n_tokens) of the last micro-batch
        self._session = None
        self._announced = False
        self._rank = 0
        self._step_rows: list[dict] = []   # rows of the optimizer step under way
        if drop_top is not None and not 0 < drop_top < 1:
            raise ValueError(f"drop_top must be in (0, 1), got {drop_top!r}")
        self.drop_top, self.drop_after = drop_top, int(drop_after)
        self.supplies_sampler = drop_top is not None
        self.dropped: dict[int, list[int]] = {}   # 1-based epoch -> sample indices left out
        self._earlier: list[dict] = []            # rows of an interrupted run, read back on resume
        self._epoch0, self._first_epoch = 0, True

    # ----------------------------------------------------------------- binding

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._rank = int(getattr(args, "process_index", 0))
        self._adapter, layers = _trained_modules(model)
        self._layers = layers
        shapes = {n: (m.lora_A[self._adapter].weight.shape[0], m.lora_A[self._adapter].weight.shape[1],
                      m.lora_B[self._adapter].weight.shape[0]) for n, m in layers.items()}
        where = f"{self._adapter!r} (the adapter being trained)"
        self._dirs = {name: resolve_direction(spec, model, shapes, where=f"direction {name}", state=where)
                      for name, spec in self.directions.items()}
        self._session = TapSession(list(layers.items()), self._adapter, self._reduce)
        self._session.__enter__()
        if self.out_dir is not None:
            _drop_replayed_steps(self.out_dir / SCORES_DIR, state.global_step, self._rank)
            if (self.out_dir / SCORES_DIR).is_dir():
                self._earlier = read_scores(self.out_dir)
        # The Trainer's 0-based epoch: counted here, since an epoch the online drop shortens
        # ends before state.epoch reaches the next whole number.
        self._epoch0 = int(math.floor((state.epoch or 0.0) + 1e-9))
        self._first_epoch = True

    def on_epoch_begin(self, args, state, control, **kwargs):
        if not self._first_epoch:
            self._epoch0 += 1
        self._first_epoch = False

    # ----------------------------------------------------------------- online drop

    def make_sampler(self, dataset, seed: int):
        """The training order: a permutation per epoch (seeded by ``seed`` and the epoch,
        so a resumed run repeats it) without the samples the online drop leaves out."""
        return _DroppingSampler(_sample_indices(dataset), seed, self)

    def excluded(self, epoch: int) -> list[int]:
        """Sample indices epoch ``epoch`` (1-based) leaves out; decided once per epoch from
        the rows of the epochs before it."""
        if self.drop_top is None or epoch <= self.drop_after:
            return []
        if epoch not in self.dropped:
            column = score_column(self._dirs if hasattr(self, "_dirs") else self.directions)
            before = [r for r in (*self._earlier, *self.rows) if int(r["epoch"]) < epoch]
            running = _running_means(before, column)
            ranked = sorted(running, key=lambda i: (-running[i], i))
            k = int(math.floor(self.drop_top * len(ranked) + 0.5))
            self.dropped[epoch] = sorted(ranked[:k])
            self._log_drop(epoch, ranked[:k], running, column)
        return self.dropped[epoch]

    def _log_drop(self, epoch, left_out, running, column) -> None:
        shown = ", ".join(str(i) for i in left_out[:20]) + (" ..." if len(left_out) > 20 else "")
        print(f"online drop: epoch {epoch} leaves out {len(left_out)} of {len(running)} samples (the top "
              f"{self.drop_top:g} by running {column}): {shown}", file=sys.stderr)
        if self.out_dir is None or self._rank != 0:
            return
        path = self.out_dir / "dropped.csv"
        new = not path.is_file()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["epoch", "sample_index", f"running_{column}"])
            for i in left_out:
                writer.writerow([epoch, i, running[i]])

    def on_train_end(self, args, state, control, **kwargs):
        self._collect()
        self._flush(state)
        if self._session is not None:
            self._session.__exit__(None, None, None)
            self._session = None
        if self.out_dir is not None and self._rank == 0:
            write_summary(self.out_dir)

    # ----------------------------------------------------------------- per batch

    def begin_batch(self, model, inputs: Mapping, fields: Mapping) -> None:
        """Called by ``SampleFields`` before each micro-batch's forward: the layout of its
        rows and the projection maps at the current weights."""
        self._announced = True
        self._collect()
        if self._session is None or not model.training or not torch.is_grad_enabled():
            return
        self._session.reset()
        mask, ids = inputs.get("attention_mask"), fields.get(SAMPLE_INDEX)
        if mask is None:
            raise ValueError("OnlineSQSD needs the batch's attention_mask to tell the samples apart; packed "
                             "or padding-free batches are not supported")
        if ids is None:
            raise ValueError("OnlineSQSD needs each row's sample_index: train with SampleFields first in the "
                             "trainer's bases (it adds the column and keeps it through the collator)")
        mask = mask.to(torch.bool)
        lengths = mask.sum(dim=1)
        cu = torch.zeros(mask.shape[0] + 1, dtype=torch.long, device=mask.device)
        cu[1:] = torch.cumsum(lengths, dim=0)
        rows = torch.nonzero(mask.reshape(-1)).squeeze(1) if bool((lengths < mask.shape[1]).any()) else None
        modules = lora_modules(model, self._adapter)
        reducer, sqnorms = projection_reducer(modules, list(self._dirs.values()), self.backend)
        reducer.start(BatchLayout(rows, cu, mask))
        self._pending = (reducer, sqnorms, ids.tolist(), lengths.tolist())

    def _reduce(self, slot, x, h, u, e) -> None:
        if self._pending is not None:
            self._pending[0](slot, x, h, u, e)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._collect()          # the last micro-batch's backward is done; weights not yet changed

    def on_step_end(self, args, state, control, **kwargs):
        if not self._announced:
            raise ValueError("OnlineSQSD saw a training step without its batch: train with SampleFields "
                             "first in the trainer's bases")
        self._collect()
        for row in self._step_rows:
            row.update(step=state.global_step, epoch=_epoch(state))
        self.rows.extend(self._step_rows)
        self._buffer.extend(self._step_rows)
        self._step_rows = []

    def on_epoch_end(self, args, state, control, **kwargs):
        self._flush(state)

    def on_save(self, args, state, control, **kwargs):
        self._flush(state)       # every row up to a checkpoint is on disk: a resume replays only later steps

    def _collect(self) -> None:
        """Per-sample rows of the micro-batch whose backward has run."""
        if self._pending is None:
            return
        reducer, sqnorms, ids, lengths = self._pending
        self._pending = None
        values = reducer.results(reducer.modules[0].A.device)
        dot, upd = values["dot"].double().cpu(), values["update_sq"].double().cpu()   # (S, M, K), (S, M)
        cos = safe_ratio(dot, upd.sqrt().unsqueeze(2) * sqnorms.sqrt().unsqueeze(0)).sum(dim=1)   # (S, K)
        names = list(self._dirs)
        rows = []
        for j, (index, n) in enumerate(zip(ids, lengths)):
            row = {"sample_index": int(index), "n_tokens": int(n)}
            ok = ran_status(bool(torch.isfinite(cos[j]).all()), float(upd[j].sum())) == OK
            for k, name in enumerate(names):
                row[f"{name}_proj"] = float(cos[j, k]) if ok else None
            if "danger" in names and "safety" in names:
                d, s = row["danger_proj"], row["safety_proj"]
                row["sqsd"] = d - s if d is not None and s is not None else None
            rows.append(row)
        self._step_rows.extend(rows)

    def _flush(self, state) -> None:
        if self.out_dir is None or not self._buffer:
            self._buffer = []
            return
        write_part(self.out_dir / SCORES_DIR, self._buffer, self._rank)
        self._buffer = []


class _DroppingSampler(torch.utils.data.Sampler):
    """Dataset positions in a seeded per-epoch order, without the online drop's samples."""

    def __init__(self, index_of: list[int], seed: int, online: OnlineSQSD):
        self.index_of, self.seed, self.online = index_of, seed, online

    def __len__(self) -> int:
        return len(self.index_of)       # the most an epoch takes (one that leaves some out ends earlier)

    def __iter__(self):
        epoch = self.online._epoch0 + 1
        left_out = set(self.online.excluded(epoch))
        order = torch.randperm(len(self.index_of), generator=torch.Generator().manual_seed(self.seed + epoch))
        return iter([p for p in order.tolist() if self.index_of[p] not in left_out])


def _sample_indices(dataset) -> list[int]:
    """Each dataset position's sample index: a tokenized sample's ``index``, a row's
    ``sample_index`` column, else the position."""
    if SAMPLE_INDEX in getattr(dataset, "column_names", ()):   # a datasets.Dataset: one column read
        return [int(i) for i in dataset[SAMPLE_INDEX]]
    out = []
    for p in range(len(dataset)):
        item = dataset[p]
        if isinstance(item, Mapping):
            out.append(int(item.get(SAMPLE_INDEX, p)))
        else:
            out.append(int(getattr(item, "index", p)))
    return out


def _running_means(rows: list[dict], column: str) -> dict[int, float]:
    sums: dict[int, list[float]] = {}
    for r in rows:
        if r.get(column) is not None:
            sums.setdefault(int(r["sample_index"]), []).append(float(r[column]))
    return {i: sum(v) / len(v) for i, v in sums.items()}


def _epoch(state) -> int:
    """1-based epoch of the step just taken (state.epoch is fractional)."""
    return max(1, int(math.ceil((state.epoch or 0.0) - 1e-9)))


COLUMN_TYPES = {"step": "int", "epoch": "int", "sample_index": "int", "n_tokens": "int"}


def write_part(directory: Path, rows: list[dict], rank: int) -> Path:
    """One Parquet part of rows (steps first..last of this rank), written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in rows]
    path = directory / f"rank{rank}-steps{min(steps):08d}-{max(steps):08d}.parquet"
    columns = {**COLUMN_TYPES, **{k: "float" for k in rows[0] if k not in COLUMN_TYPES}}
    write_rows(path, rows, columns)
    return path


def read_scores(out_dir) -> list[dict]:
    """Every row of a run's parts (all ranks), sorted by step and sample."""
    directory = Path(out_dir) / SCORES_DIR
    rows = [r for part in sorted(directory.glob("*.parquet")) for r in read_rows(part)]
    return sorted(rows, key=lambda r: (r["step"], r["sample_index"]))


def _drop_replayed_steps(directory: Path, resumed_at: int, rank: int) -> None:
    """A run resumed at step g replays steps after g: their rows go first."""
    for part in sorted(directory.glob(f"rank{rank}-steps*.parquet")):
        first, last = (int(x) for x in part.stem.split("steps")[1].split("-"))
        if first > resumed_at:
            part.unlink()
        elif last > resumed_at:
            kept = [r for r in read_rows(part) if r["step"] <= resumed_at]
            part.unlink()
            if kept:
                write_part(directory, kept, rank)


def epoch_means(rows: list[dict], column: str) -> dict[int, dict[int, float]]:
    """{epoch: {sample_index: mean of column over its rows in that epoch}}."""
    sums: dict[int, dict[int, list[float]]] = {}
    for r in rows:
        if r.get(column) is not None:
            sums.setdefault(int(r["epoch"]), {}).setdefault(int(r["sample_index"]), []).append(float(r[column]))
    return {e: {i: sum(v) / len(v) for i, v in per.items()} for e, per in sorted(sums.items())}


def write_summary(out_dir) -> Path:
    """``online_summary.csv``: per epoch and sample, the mean of every score column."""
    rows = read_scores(out_dir)
    path = Path(out_dir) / SUMMARY_CSV
    if not rows:
        return path
    columns = [k for k in rows[0] if k.endswith("_proj") or k == "sqsd"]
    means = {c: epoch_means(rows, c) for c in columns}
    counts: dict[tuple[int, int], int] = {}
    for r in rows:
        key = (int(r["epoch"]), int(r["sample_index"]))
        counts[key] = counts.get(key, 0) + 1
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "sample_index", "n_steps", *columns])
        for epoch, index in sorted(counts):
            writer.writerow([epoch, index, counts[epoch, index],
                             *[means[c].get(epoch, {}).get(index, "") for c in columns]])
    return path


# ------------------------------------------------------------------ the stationarity check
# The paper's reviewers asked whether scores taken before fine-tuning still hold as the
# weights move: each epoch's online scores against the scores at the start weights.


def score_column(names) -> str:
    names = list(names)
    return "sqsd" if "danger" in names and "safety" in names else f"{names[0]}_proj"


def score_at_start(peft_model, samples, directions: Mapping[str, Any], tokenizer, path, *,
                   batch_size: int = 8, max_length: int = 1024) -> Path:
    """Every sample's offline scores at the model's current (start) weights, to ``path``
    (CSV: sample_index, <name>_proj..., sqsd): one pass of the influence engine."""
    adapter, _ = _trained_modules(peft_model)
    names = list(directions)
    stats = GradientStats(peft_model, adapter=adapter, tokenizer=tokenizer, batch_size=batch_size,
                          max_length=max_length)
    result = stats.direction_scores(samples, [directions[n] for n in names])
    rows = []
    for index, status, cos in zip(result.indices, result.status, result.direction_cosine.tolist()):
        row = {"sample_index": index, **{f"{n}_proj": (c if status == "ok" else None) for n, c in zip(names, cos)}}
        if score_column(names) == "sqsd":
            row["sqsd"] = None if status != "ok" else row["danger_proj"] - row["safety_proj"]
        rows.append(row)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_rows(path, rows)
    return Path(path)


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (ties by order: scores are floats); None below 3 pairs."""
    if len(a) < 3:
        return None
    ra, rb = (np.argsort(np.argsort(np.asarray(v, dtype=float))).astype(float) for v in (a, b))
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def stationarity(out_dir) -> dict[str, float | None]:
    """{epoch: Spearman of that epoch's mean online score with the start score}."""
    start_path = Path(out_dir) / "start_scores.csv"
    rows = read_scores(out_dir)
    if not rows or not start_path.is_file():
        return {}
    names = [k[:-5] for k in rows[0] if k.endswith("_proj")]
    column = score_column(names)
    start = {int(r["sample_index"]): float(r[column]) for r in read_rows(start_path) if r.get(column) is not None}
    out = {}
    for epoch, means in epoch_means(rows, column).items():
        common = sorted(set(means) & set(start))
        out[str(epoch)] = spearman([means[i] for i in common], [start[i] for i in common])
    return out
