"""Drift monitoring while a LoRA trains: how far the update so far points along directions.

SQSD scores samples *before* fine-tuning (docs/METHOD.md §1). ``DriftMonitor`` watches the
fine-tuning itself: every N optimizer steps it compares the LoRA update made since training
began with direction adapters (e.g. a danger and a safety direction), per LoRA module m:
    U_m = s (B A - B0 A0)       s: the trained adapter's scaling, B0 A0: its factors at the start
    D_m = s_d B_d A_d           s_d: the direction adapter's own scaling for that module
    proj_d = sum_m <U_m, D_m> / sqrt(sum_m ||D_m||^2)            (scalar projection)
    cos_d  = sum_m <U_m, D_m> / (||U|| ||D||)  (0 when U = 0),   ||U||^2 = sum_m ||U_m||^2

all in the global space of every module. Unlike the scores' sum of per-module cosines, these
are one projection of the whole update; with a uniform s_d (no alpha_pattern/rank_pattern)
they equal the same quantities with the scaling dropped, as the scoring commands do.

No d_out x d_in matrix is formed (§3's identity): ``<B1 A1, B2 A2>_F = sum((B1^T B2) * (A1 A2^T))``
with Gram matrices of the ranks, and U_m is written as ``[B - B0, B0] [A; A - A0]`` so that its
norm comes from the (small) differences, not from the cancellation of two large terms.
"""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from sqsd_fast.choices import DIRECTION_NAME as NAME_PATTERN
from sqsd_fast.engine.directions import resolve_direction
from sqsd_fast.io.atomic import atomic_path
from sqsd_fast.models.adapters import check_direction_is_usable, read_adapter, state_modules
from sqsd_fast.models.quiet import quiet_libraries

# One rule for the names and actions, shared with train-adapter's options.
from sqsd_fast.options.train_checks import MONITOR_ACTIONS as ACTIONS

with quiet_libraries():   # bitsandbytes, imported with it where installed, announces optional kernels
    from transformers import TrainerCallback  # noqa: TID253 (subclassed at import; only training loads this)

DRIFT_CSV = "drift.csv"
DRIFT_PLOT = "drift.png"
DRIFT_START = "drift_start.safetensors"


class DriftWarning(UserWarning):
    """A monitored direction's projection reached its threshold."""


class DriftMonitor(TrainerCallback):
    """A ``transformers.TrainerCallback`` logging how far the LoRA update points along
    directions while training (see the module docstring for the quantities).

    Args:
        directions: ``{name: direction}``; a direction is a LoRA adapter directory, the
            name of an adapter loaded on the trained ``PeftModel``, or
            ``{module: LoraFactors or (A_d, B_d)}`` in memory (taken as ``D = B_d A_d``:
            fold any scaling into the factors). It must cover exactly the trained LoRA's
            modules.
        every_n_steps: measure every N optimizer steps (and once more when training ends).
        csv_path: append one row per measurement: step, epoch, update_norm, and
            ``<name>_proj``, ``<name>_cos`` per direction.
        plot_path: a PNG of the projections against the step, written when training ends.
        threshold: ``{name: value}``; a projection >= value warns once (``DriftWarning``),
            or with ``on_threshold="stop"`` also stops training.
        on_threshold: ``"warn"`` or ``"stop"``.
        start_path: a safetensors file for the LoRA factors at the start of training. A
            run starting at step 0 records them there; a run resumed from a checkpoint reads
            them back, so the update stays measured from the run's start, not the resume's.

    Measurements go to ``history`` (a list of dicts, with ``final`` the last), to the
    Trainer's ``state.log_history`` as ``drift/update_norm``, ``drift/<name>_proj`` and
    ``drift/<name>_cos``, and to ``csv_path``. ``triggered`` maps each direction that
    reached its threshold to the step; ``stopped_at`` is the step training was stopped at.
    """

    def __init__(self, directions: Mapping[str, Any], *, every_n_steps: int = 10,
                 csv_path: str | os.PathLike | None = None,
                 plot_path: str | os.PathLike | None = None,
                 threshold: Mapping[str, float] | None = None, on_threshold: str = "warn",
                 start_path: str | os.PathLike | None = None):
        self.directions = _check_directions(directions)
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) \
                or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.csv_path = _check_path("csv_path", csv_path)
        self.plot_path = _check_path("plot_path", plot_path)
        self.start_path = _check_path("start_path", start_path)
        self.threshold = _check_threshold(threshold, self.directions)
        if on_threshold not in ACTIONS:
            raise ValueError(f"on_threshold must be 'warn' or 'stop', got {on_threshold!r}")
        if on_threshold == "stop" and not self.threshold:
            raise ValueError("on_threshold='stop' needs a threshold: give threshold={name: "
                             "value} for the directions that should stop training")
        self.on_threshold = on_threshold
        self.columns = ["step", "epoch", "update_norm"] + [
            f"{name}_{kind}" for name in self.directions for kind in ("proj", "cos")]
        self.history: list[dict] = []
        self.triggered: dict[str, int] = {}
        self.stopped_at: int | None = None
        self._modules: dict[str, Any] = {}      # module name -> peft LoRA layer (live)
        self._adapter: str | None = None
        self._scaling: dict[str, float] = {}
        self._start: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._dirs: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._dir_sqnorm: dict[str, float] = {}

    @property
    def final(self) -> dict | None:
        """The last measurement, or None before the first."""
        return self.history[-1] if self.history else None

    # ----------------------------------------------------------------- model and start

    def bind(self, model) -> None:
        """Resolve the directions against ``model``'s trained LoRA (its active adapter):
        same modules and shapes required, else a ``ValueError`` naming the direction."""
        self._adapter, self._modules = _trained_modules(model)
        self._scaling = {n: float(m.scaling[self._adapter]) for n, m in self._modules.items()}
        shapes = {}     # {module: (r, d_in, d_out)}, what resolve_direction checks against
        for n, m in self._modules.items():
            (r, d_in), d_out = m.lora_A[self._adapter].weight.shape, \
                m.lora_B[self._adapter].weight.shape[0]
            shapes[n] = (r, d_in, d_out)
        state = f"{self._adapter!r} (the adapter being trained)"
        self._dirs, self._dir_sqnorm = {}, {}
        for name, spec in self.directions.items():
            factors = resolve_direction(spec, model, shapes, where=f"direction {name}", state=state)
            scalings = _direction_scalings(spec, model, factors)
            per_module, sqnorm = {}, 0.0
            for module, f in factors.items():
                device = self._modules[module].lora_A[self._adapter].weight.device
                A_d = f.A.detach().to(device=device, dtype=torch.float64)
                B_d = f.B.detach().to(device=device, dtype=torch.float64) * scalings[module]
                per_module[module] = (A_d, B_d)
                sqnorm += float(_inner(B_d, A_d, B_d, A_d))
            self._dirs[name], self._dir_sqnorm[name] = per_module, sqnorm

    def snapshot(self, model=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The trained LoRA's factors now, ``{module: (A, B)}`` as float64 copies."""
        adapter, modules = (self._adapter, self._modules) if model is None \
            else _trained_modules(model)
        with torch.no_grad():
            return {n: (m.lora_A[adapter].weight.detach().to(torch.float64).clone(),
                        m.lora_B[adapter].weight.detach().to(torch.float64).clone())
                    for n, m in modules.items()}

    def save_start(self, model) -> None:
        """Record ``model``'s LoRA factors as the run's start in ``start_path``.

        For a caller that knows the model is at the run's start before a resumed Trainer
        loads the checkpoint (``train-adapter`` does this when a run resumed without a
        start file, e.g. monitoring added at the resume).
        """
        if self.start_path is None:
            raise ValueError("save_start needs the monitor's start_path")
        _save_factors(self.start_path, self.snapshot(model))

    def _load_start(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        try:
            stored = load_file(self.start_path, device="cpu")
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise ValueError(f"{self.start_path}: cannot read the start factors ({exc}); delete "
                             f"it to measure from the resumed checkpoint instead") from None
        start = {}
        for name, module in self._modules.items():
            A = module.lora_A[self._adapter].weight
            B = module.lora_B[self._adapter].weight
            A0, B0 = stored.get(f"{name}.lora_A"), stored.get(f"{name}.lora_B")
            if A0 is None or B0 is None or A0.shape != A.shape or B0.shape != B.shape:
                raise ValueError(f"{self.start_path}: the start factors saved there do not fit "
                                 f"the LoRA being trained (module {name}); delete the file to "
                                 f"measure from the resumed checkpoint instead")
            start[name] = (A0.to(device=A.device, dtype=torch.float64),
                           B0.to(device=B.device, dtype=torch.float64))
        return start

    # --------------------------------------------------------------------- measuring

    def measure(self) -> dict:
        """One measurement of the bound model now: ``update_norm`` and per direction
        ``<name>_proj``, ``<name>_cos`` (without step and epoch)."""
        if not self._modules or not self._start:
            raise RuntimeError("DriftMonitor.measure: no model bound yet (the Trainer binds it "
                               "when training begins)")
        names = list(self._dirs)
        totals: dict[torch.device, torch.Tensor] = {}
        with torch.no_grad():
            for module_name, layer in self._modules.items():
                A = layer.lora_A[self._adapter].weight.detach().to(torch.float64)
                B = layer.lora_B[self._adapter].weight.detach().to(torch.float64)
                A0, B0 = self._start[module_name]
                # U/s = B A - B0 A0 = (B - B0) A + B0 (A - A0) = [B - B0, B0] [A; A - A0]:
                # every term of its Gram sums holds a difference, so a small update of
                # large factors is not lost to large terms cancelling.
                B_u = torch.cat([B - B0, B0], dim=1) * self._scaling[module_name]
                A_u = torch.cat([A, A - A0], dim=0)
                values = [_inner(B_u, A_u, B_u, A_u)]
                for n in names:
                    A_d, B_d = self._dirs[n][module_name]
                    values.append(_inner(B_u, A_u, B_d, A_d))
                stacked = torch.stack(values)
                totals[stacked.device] = totals[stacked.device] + stacked \
                    if stacked.device in totals else stacked
        total = sum(t.cpu() for t in totals.values()).tolist()
        # sum((G1 * G2)) of two PSD Grams is >= 0; max() only absorbs rounding
        norm = math.sqrt(max(total[0], 0.0))
        row = {"update_norm": norm}
        for name, dot in zip(names, total[1:]):
            d_norm = math.sqrt(self._dir_sqnorm[name])
            row[f"{name}_proj"] = dot / d_norm
            row[f"{name}_cos"] = dot / (norm * d_norm) if norm > 0 else 0.0
        return row

    def _record(self, state, control) -> None:
        row = {"step": int(state.global_step), "epoch": float(state.epoch or 0.0),
               **self.measure()}
        self.history.append(row)
        state.log_history.append({**{f"drift/{k}": v for k, v in row.items()
                                     if k not in ("step", "epoch")},
                                  "epoch": row["epoch"], "step": row["step"]})
        if self.csv_path is not None and state.is_world_process_zero:
            with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow([row[c] for c in self.columns])
        self._check_threshold(row, control)

    def _check_threshold(self, row: dict, control) -> None:
        for name, limit in self.threshold.items():
            value = row[f"{name}_proj"]
            if name in self.triggered or value < limit:
                continue
            self.triggered[name] = row["step"]
            message = (f"drift monitor: {name}_proj = {value:.4g} reached the threshold "
                       f"{limit:g} at step {row['step']} (the LoRA update so far points "
                       f"along direction {name!r})")
            if self.on_threshold == "stop":
                control.should_training_stop = True
                self.stopped_at = row["step"]
                message += "; stopping training (on_threshold='stop')"
            warnings.warn(message, DriftWarning, stacklevel=2)

    # ------------------------------------------------------------- Trainer callbacks

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("DriftMonitor needs the model: the Trainer passes it to callbacks")
        self.bind(model)
        step = int(state.global_step)
        self.history, self.triggered, self.stopped_at = [], {}, None
        if step == 0:          # a new run: the model is at its start now
            self._start = self.snapshot()
            if self.start_path is not None and state.is_world_process_zero:
                _save_factors(self.start_path, self._start)
        elif self.start_path is not None and os.path.isfile(self.start_path):
            self._start = self._load_start()
        else:
            self._start = self.snapshot()
            warnings.warn(f"drift monitor: the run resumed at step {step} without its start "
                          f"factors{' in ' + str(self.start_path) if self.start_path else ''}; "
                          f"the update is measured from step {step}", DriftWarning, stacklevel=2)
        if state.is_world_process_zero:
            self._start_csv(step)
        for row in self.history:          # thresholds already reached before a resume
            for name, limit in self.threshold.items():
                if name not in self.triggered and row[f"{name}_proj"] >= limit:
                    self.triggered[name] = row["step"]

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_n_steps == 0:
            self._record(state, control)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._start and (not self.history or self.history[-1]["step"] != state.global_step):
            self._record(state, control)
        if self.plot_path is not None and self.history and state.is_world_process_zero:
            plot_drift(self.history, list(self.directions), self.plot_path,
                       threshold=self.threshold)
        return control

    # ------------------------------------------------------------------------ files

    def _start_csv(self, step: int) -> None:
        """A new run starts the CSV over; a resumed one keeps the rows up to its step (the
        rows after the checkpoint are measured again) and takes them into ``history``."""
        if self.csv_path is None:
            return
        kept: list[dict] = []
        if step > 0 and os.path.isfile(self.csv_path):
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames == self.columns:
                    kept = [{k: (int(v) if k == "step" else float(v)) for k, v in r.items()}
                            for r in reader if r.get("step") and int(r["step"]) <= step]
                else:
                    warnings.warn(f"drift monitor: {self.csv_path} has other columns (other "
                                  f"directions?); starting it over", DriftWarning, stacklevel=3)
        with atomic_path(self.csv_path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(self.columns)
                writer.writerows([r[c] for c in self.columns] for r in kept)
        self.history = kept


def plot_drift(history, names, path, *, threshold: Mapping[str, float] | None = None) -> None:
    """A PNG of each direction's projection against the optimizer step (thresholds dashed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)     # no pyplot: leaves the caller's matplotlib backend alone
    ax = fig.add_subplot(1, 1, 1)
    steps = [row["step"] for row in history]
    for k, name in enumerate(names):
        color = f"C{k % 10}"
        ax.plot(steps, [row[f"{name}_proj"] for row in history], marker="o", markersize=3,
                color=color, label=name)
        if threshold and name in threshold:
            ax.axhline(threshold[name], color=color, linestyle="--", linewidth=0.8)
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("projection of the LoRA update")
    ax.set_title("LoRA update drift along the monitored directions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png")


# ------------------------------------------------------------------------- helpers


def _inner(B1: torch.Tensor, A1: torch.Tensor, B2: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
    """``<B1 A1, B2 A2>_F`` from r x r Grams (docs/METHOD.md §3); B2, A2 may live elsewhere."""
    B2, A2 = B2.to(B1.device), A2.to(A1.device)
    return ((B1.T @ B2) * (A1 @ A2.T)).sum()


def _trained_modules(model) -> tuple[str, dict]:
    """The active adapter of a ``PeftModel`` and its LoRA layers ``{module name: layer}``."""
    if not hasattr(model, "peft_config") or not hasattr(model, "active_adapter"):
        raise ValueError(f"DriftMonitor needs a peft LoRA model (PeftModel); got "
                         f"{type(model).__name__}")
    adapter = model.active_adapter
    if not isinstance(adapter, str):
        if len(adapter) != 1:
            raise ValueError(f"DriftMonitor: the model trains several adapters at once "
                             f"({', '.join(adapter)}); monitor one")
        adapter = adapter[0]
    return adapter, state_modules(model, adapter, where=f"the trained adapter {adapter!r}")


def _direction_scalings(spec, model, factors) -> dict[str, float]:
    """s_d per module: peft's own rule (alpha or its alpha_pattern entry over r, or over
    sqrt(r) with rslora) for an adapter directory, the live layers' scaling for an adapter
    on the model, 1 for factors given in memory."""
    if isinstance(spec, Mapping):
        return {name: 1.0 for name in factors}
    if isinstance(spec, str) and spec in getattr(model, "peft_config", {}):
        return {n: float(m.scaling[spec]) for n, m in state_modules(model, spec).items()}

    from peft.utils.other import get_pattern_key
    with open(os.path.join(os.fspath(spec), "adapter_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    alpha, patterns = config.get("lora_alpha", 8), config.get("alpha_pattern") or {}
    out = {}
    for name, f in factors.items():
        r = f.A.shape[0]        # the factors' rank is the module's r (rank_pattern included)
        a = patterns.get(get_pattern_key(patterns.keys(), name), alpha)
        out[name] = a / math.sqrt(r) if config.get("use_rslora") else a / r
    return out


def _save_factors(path, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    tensors = {}
    for name, (A, B) in factors.items():
        tensors[f"{name}.lora_A"] = A.detach().to("cpu", torch.float64).contiguous()
        tensors[f"{name}.lora_B"] = B.detach().to("cpu", torch.float64).contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)


def _check_directions(directions) -> dict:
    if not isinstance(directions, Mapping) or not directions:
        raise ValueError("directions must be a non-empty mapping {name: adapter directory, "
                         "adapter name or {module: (A, B)}}")
    out = {}
    for name, spec in directions.items():
        if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
            raise ValueError(f"directions: name {name!r} must be letters, digits, '_', '.' or "
                             f"'-' (it names CSV columns and log keys)")
        if isinstance(spec, os.PathLike) or (isinstance(spec, str) and (
                os.path.exists(spec) or "/" in spec or os.sep in spec)):
            # A directory is checked now, before any training; a plain word that is not
            # a path may name an adapter on the model, resolved when training begins.
            try:
                check_direction_is_usable(read_adapter(spec))
            except ValueError as exc:
                raise ValueError(f"directions: {name}: {exc}") from None
            spec = os.fspath(spec)
        elif not isinstance(spec, (str, Mapping)):
            raise ValueError(f"directions: {name}: expected an adapter directory, an adapter "
                             f"name or {{module: (A, B)}}, got {type(spec).__name__}")
        out[name] = spec
    return out


def _check_threshold(threshold, directions) -> dict[str, float]:
    if threshold is None:
        return {}
    if not isinstance(threshold, Mapping):
        raise ValueError(f"threshold must be a mapping {{direction name: value}}, got "
                         f"{type(threshold).__name__}")
    out = {}
    for name, value in threshold.items():
        if name not in directions:
            raise ValueError(f"threshold: {name!r} is not a monitored direction (monitored: "
                             f"{', '.join(directions)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise ValueError(f"threshold: {name} must be a finite number, got {value!r}")
        out[name] = float(value)
    return out


def _check_path(name, value):
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError(f"{name} must be a file path or None, got {value!r}")
    return os.fspath(value)
