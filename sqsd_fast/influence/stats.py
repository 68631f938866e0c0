"""``GradientStats``: cheap per-sample LoRA-gradient statistics for influence-style tools.

    stats = GradientStats(peft_model, tokenizer=tok)       # the active adapter is the state
    stats.self_stats(train).grad_sqnorm                    # TracIn self-influence, (S,)
    q = stats.query_gradient(val, reduce="mean")           # LESS: mean gradient of queries
    stats.query_scores(train, q).query_cosine              # (S, K), global cosine
    stats.direction_scores(train, ["lora_unsafe", stats.mean_update(anchors)])
    stats.sketch(train, size=(4, 32), seed=0).sketch       # (S, D) Kronecker sketches
    stats.compute(train, queries=q, directions=[...], sketch_size=32)   # all in one pass

A face on the engine (sqsd_fast/engine/), as ``SQSDScorer`` is: the same batch runner (one
forward + backward per batch; each sample gets exactly its batch-1 gradient) with the
:class:`~sqsd_fast.engine.reducers.GradientMoments` and ``KroneckerSketch`` reducers on the
training side and ``GradientSum`` on the query side; no per-sample gradient is formed on
the training side. The caller's model is borrowed per pass and given back unchanged.
"""
from __future__ import annotations

import os
import warnings
from typing import Iterable, Iterator, Mapping

import torch

from sqsd_fast.choices import check_positive_int
from sqsd_fast.data.tokenize import DEFAULT_MAX_LENGTH, count_response_tokens
from sqsd_fast.data.batching import pad_id
from sqsd_fast.engine.loading import load_model_and_tokenizer, use_or_attach_state
from sqsd_fast.engine.modules import lora_modules
from sqsd_fast.engine.reducers import GradientMoments, GradientSum, KroneckerSketch, Reducers
from sqsd_fast.engine.runner import BatchRunner
from sqsd_fast.engine.sketch import sketch_maps
from sqsd_fast.engine.status import ZERO_GRADIENT, batch_statuses
from sqsd_fast.engine.directions import prepare_directions, resolve_direction
from sqsd_fast.influence.factors import QueryGradients, mean_update_direction
from sqsd_fast.influence.inputs import limit_response_tokens, prepare_samples
from sqsd_fast.influence.results import GradientResult
from sqsd_fast.models.adapters import LoraFactors
from sqsd_fast.engine.batch_pass import progress_batches


class GradientStats:
    """Per-sample statistics of the gradient of one LoRA adapter (the *state*) of a PeftModel.

    Args:
        peft_model: a ``peft.PeftModel``; borrowed per pass (adapter activated, parameters
            frozen, eval mode, scaling) and given back as it was.
        adapter: the state's adapter name (default: the active adapter).
        tokenizer: needed only for records or data files (pads with its pad/eos id).
        scaling: LoRA scaling of the state during the passes (default: its alpha/r).
        backend: kernel backend of ``factor_grad_stats`` ("auto", "reference", "cpp", "triton").
        batch_size: samples per forward + backward at most (results do not depend on it).
        max_tokens: tokens per forward + backward at most, padding included (None: the
            device's default, engine/token_budget.py; results do not depend on it).
        max_length: tokens kept when records are tokenized.
    """

    def __init__(self, peft_model, *, adapter: str | None = None, tokenizer=None, scaling: float | None = None,
                 backend: str = "auto", batch_size: int = 8, max_tokens: int | None = None,
                 max_length: int = DEFAULT_MAX_LENGTH):
        from peft import PeftModel

        if not isinstance(peft_model, PeftModel):
            raise TypeError(f"GradientStats needs a peft PeftModel, got {type(peft_model).__name__}; wrap the model "
                            "with peft, or use GradientStats.from_pretrained(model, adapter_dir)")
        if adapter is None:
            adapter = peft_model.active_adapter
            if isinstance(adapter, (list, tuple)):
                if len(adapter) != 1:
                    raise ValueError(f"the model has {len(adapter)} active adapters; name one with adapter=")
                adapter = adapter[0]
        self.model, self.adapter, self.tokenizer = peft_model, adapter, tokenizer
        self.modules = lora_modules(peft_model, adapter)   # refuses embeddings, DoRA, ...
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.max_tokens = check_positive_int("max_tokens", max_tokens, optional=True)
        self.max_length = check_positive_int("max_length", max_length)
        self.runner = BatchRunner(peft_model, pad_token_id=pad_id(tokenizer),
                                  scalings={adapter: float(scaling)} if scaling is not None else None, backend=backend)
        self.device = self.runner.device
        self.backend = self.runner.backend

    @classmethod
    def from_pretrained(cls, model, adapter, *, tokenizer=None, dtype="float32", device=None, quantization=None,
                        **kwargs):
        """Loads the base model (directory, hub id, .gguf, or an in-memory model) and the
        state ``adapter`` (an adapter directory, or an adapter name on an in-memory PeftModel);
        the tokenizer comes from ``model`` when it is a path. An adapter directory given with
        an in-memory PeftModel is loaded onto it as an extra adapter, which stays (as
        ``SQSDScorer.from_peft_model`` does). ``quantization`` "4bit" / "8bit": a QLoRA base
        (sqsd_fast/models/quantized.py). Other keywords: as ``__init__``."""
        base, tokenizer = load_model_and_tokenizer(model, dtype=dtype, device=device, tokenizer=tokenizer,
                                                   quantization=quantization)
        peft_model, name = use_or_attach_state(base, adapter, "influence_state")
        peft_model.to(next(base.parameters()).device)
        return cls(peft_model, adapter=name, tokenizer=tokenizer, **kwargs)

    def use_checkpointing(self, enabled: bool = True) -> "GradientStats":
        """Gradient checkpointing for every pass (``BatchRunner.use_checkpointing``)."""
        self.runner.use_checkpointing(enabled)
        return self

    # ------------------------------------------------------------------ verbs

    def self_stats(self, samples, **kwargs) -> GradientResult:
        """Both squared norms per sample: ``grad_sqnorm`` (LoRA-parameter gradient, TracIn
        self-influence) and ``update_sqnorm`` (induced update). Keywords: :meth:`compute`'s."""
        return self.compute(samples, **kwargs)

    def query_scores(self, samples, queries, **kwargs) -> GradientResult:
        """``query_dot`` and ``query_cosine`` (S, K) against K query gradients: a
        ``QueryGradients`` (see :meth:`query_gradient`), ``{module: (G_A, G_B)}``, query
        sample sets (each reduced to its mean gradient), or a list of these."""
        return self.compute(samples, queries=queries, **kwargs)

    def direction_scores(self, samples, directions, **kwargs) -> GradientResult:
        """``direction_cosine`` (S, J: SQSD's sum over modules of cos(dW_m, D_m)),
        ``direction_dot`` and ``direction_global_cosine`` against J directions: adapter
        directories or names, ``{module: (A, B)}`` dicts, or :meth:`mean_update` results."""
        return self.compute(samples, directions=directions, **kwargs)

    def sketch(self, samples, size, seed: int = 0, **kwargs) -> GradientResult:
        """``.sketch`` (S, D): Kronecker random projections of each sample's LoRA-parameter
        gradient (sketch.py: ``size`` = (k1, k2) or k, D = 2 k1 k2 per module)."""
        return self.compute(samples, sketch_size=size, seed=seed, **kwargs)

    def compute(self, samples, **kwargs) -> GradientResult:
        """Every asked statistic in one pass, rows in input order (see :meth:`iter_compute`)."""
        role = kwargs.get("role", "training samples")
        prepared = prepare_samples(samples, self.tokenizer, self.model, role=role, max_length=self.max_length)
        parts = list(self.iter_compute(prepared, **kwargs))
        return GradientResult.concat(parts, order=[s.index for s in prepared])

    def iter_compute(self, samples, *, queries=None, directions=(), sketch_size=None, seed: int = 0,
                     batch_size: int | None = None, max_tokens: int | None = None,
                     response_tokens: int | None = None, skip_indices=frozenset(),
                     progress: bool = False, role: str = "training samples") -> Iterator[GradientResult]:
        """One :class:`GradientResult` per batch (length-bucketed, longest first).

        queries: see :meth:`query_scores`; directions: see :meth:`direction_scores`;
        sketch_size / seed: see :meth:`sketch`; response_tokens: the loss on the first N
        response tokens only; skip_indices: sample indices left out (e.g. on resume);
        batch_size / max_tokens: this call's batching (default: the constructor's).
        """
        samples = prepare_samples(samples, self.tokenizer, self.model, role=role, max_length=self.max_length)
        shapes = self.shapes()
        q = self._queries(queries, response_tokens)
        dirs, dir_labels = self._directions(directions)
        maps = sketch_maps(sketch_size, shapes, seed) if sketch_size is not None else {}
        modules, queries_A, queries_B, dir_sq = self._queries_and_directions(q, dirs)
        dtype = self._dtype()
        reducer = Reducers(
            GradientMoments(modules, self.backend, queries_A, queries_B),
            KroneckerSketch(modules, [maps[m.name].to(self.device, dtype) for m in modules]) if maps else None)
        todo = [s for s in samples if s.index not in skip_indices]
        n_q = 0 if q is None else q.k
        k = n_q + len(dir_labels)
        sketch_width = sum(2 * p.P_u.shape[0] * p.P_x.shape[0] for p in maps.values())
        for batch in self._batches(todo, batch_size, progress, max_tokens):
            used = [limit_response_tokens(s, response_tokens) for s in batch]
            out = self.runner.run(used, self.adapter, modules, reducer)
            n, m = len(batch), len(modules)
            grad_sq = out.values.get("grad_sq", torch.zeros(n, m, dtype=torch.float64))
            upd_sq = out.values.get("update_sq", torch.zeros(n, m, dtype=torch.float64))
            proj = out.values.get("proj", torch.zeros(n, m, k, dtype=torch.float64))
            sketch = out.values.get("sketch", torch.zeros(n, sketch_width, dtype=torch.float64)) if maps else None
            status = batch_statuses(out, [grad_sq, upd_sq, proj] + ([sketch] if maps else []),
                                    zero=ZERO_GRADIENT, zero_when=grad_sq)
            yield GradientResult(
                indices=[s.index for s in batch], module_names=list(shapes), status=status,
                n_tokens=[len(s.input_ids) for s in batch],
                n_response_tokens=[count_response_tokens(s.labels) for s in batch],
                grad_sqnorm_per_module=grad_sq, update_sqnorm_per_module=upd_sq,
                query_dot=proj[:, :, :n_q].sum(1), direction_dot_per_module=-proj[:, :, n_q:],
                query_sqnorm=q.sqnorm() if q is not None else torch.zeros(0, dtype=torch.float64),
                direction_sqnorm=dir_sq, sketch=sketch, query_labels=q.labels if q is not None else [],
                direction_labels=dir_labels)

    def query_gradient(self, samples, *, reduce: str = "mean", normalize: bool = False, label: str = "query",
                       batch_size: int | None = None, response_tokens: int | None = None,
                       progress: bool = False) -> QueryGradients:
        """The LoRA-parameter gradient of a set of query samples, summed (``reduce="sum"``)
        or averaged (``"mean"``) over them; ``normalize=True`` L2-normalizes each sample's
        gradient first (in the global space) as gradient matching does. Small r x d matrices
        per module are formed: this is the query side. Samples without a response token are
        left out with a warning; a set with none is refused. ``progress``: a bar over the
        samples (an anchor set of hundreds takes minutes on a CPU)."""
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        role = f"query {label!r}"
        samples = prepare_samples(samples, self.tokenizer, self.model, role=role, max_length=self.max_length)
        used = [limit_response_tokens(s, response_tokens) for s in samples]
        usable = [s for s in used if count_response_tokens(s.labels) > 0]
        if not usable:
            raise ValueError(f"{role}: none of its {len(samples)} samples has a response token (after truncation"
                             f"{' and --response-tokens' if response_tokens else ''}); no gradient to take")
        if len(usable) < len(samples):
            warnings.warn(f"{role}: {len(samples) - len(usable)} of {len(samples)} samples have no response token "
                          "and are left out", RuntimeWarning, stacklevel=2)
        weights = {s.index: 1.0 for s in usable}
        if normalize:
            norms = self.compute(usable, batch_size=batch_size, role=role)
            for index, status, sq in zip(norms.indices, norms.status, norms.grad_sqnorm.tolist()):
                if status != "ok":
                    raise ValueError(f"{role}: sample {index} has status {status}; it cannot be normalized")
                weights[index] = sq ** -0.5
        if reduce == "mean":
            weights = {i: w / len(usable) for i, w in weights.items()}
        modules = lora_modules(self.model, self.adapter)
        reducer = GradientSum(modules)
        for batch in self._batches(usable, batch_size, progress, self.max_tokens):
            out = self.runner.run(batch, self.adapter, modules, reducer, [weights[s.index] for s in batch])
            if not all(out.finite_loss):
                bad = next(s.index for s, ok in zip(batch, out.finite_loss) if not ok)
                raise ValueError(f"{role}: sample {bad} has a non-finite loss")
        return QueryGradients({m.name: (G_A.unsqueeze(0), G_B.unsqueeze(0))
                               for m, G_A, G_B in zip(modules, reducer.G_A, reducer.G_B)}, [label])

    def mean_update(self, samples, *, label: str = "anchors", **kwargs) -> dict[str, LoraFactors]:
        """The mean induced update ``-(mean G_B A + B mean G_A)`` of an anchor set, as a
        rank-2r direction ``{module: LoraFactors}`` for :meth:`direction_scores`."""
        q = self.query_gradient(samples, reduce="mean", label=label, **kwargs)
        return {m.name: mean_update_direction(m.A, m.B, q.modules[m.name][0][0], q.modules[m.name][1][0])
                for m in lora_modules(self.model, self.adapter)}

    def shapes(self) -> dict[str, tuple[int, int, int]]:
        """``{module: (r, d_in, d_out)}`` of the state, in model order."""
        return {m.name: m.shape for m in self.modules}

    # ------------------------------------------------------------------ internals

    def _queries(self, queries, response_tokens) -> QueryGradients | None:
        if queries is None:
            return None
        if isinstance(queries, QueryGradients):
            queries = [queries]
        elif isinstance(queries, Mapping):   # {module: (G_A, G_B)} given in memory
            queries = [QueryGradients.from_factors(queries)]
        elif isinstance(queries, (str, os.PathLike)) or not isinstance(queries, Iterable):
            queries = [queries]
        else:
            queries = list(queries)
            if queries and not isinstance(queries[0], QueryGradients) and _is_sample(queries[0]):
                queries = [queries]   # one query set given as a list of samples
        out = [q if isinstance(q, QueryGradients) else
               self.query_gradient(q, label=f"query {i}", response_tokens=response_tokens)
               for i, q in enumerate(queries)]
        stacked = QueryGradients.stack(out)
        stacked.check_against(self.shapes(), repr(self.adapter))
        return stacked

    def _directions(self, directions) -> tuple[list[dict], list[str]]:
        if directions is None:
            return [], []
        if isinstance(directions, (str, os.PathLike, dict)):
            directions = [directions]
        labels = [d if isinstance(d, str) else os.fspath(d) if isinstance(d, os.PathLike) else f"direction {i}"
                  for i, d in enumerate(directions)]
        return [resolve_direction(d, self.model, self.shapes(), where=f"direction {label}", state=repr(self.adapter))
                for d, label in zip(directions, labels)], labels

    def _batches(self, samples, batch_size, progress, max_tokens):
        """Length-bucketed batches (longest first) with this call's or the constructor's sizes."""
        return progress_batches(samples, check_positive_int("batch_size", batch_size or self.batch_size),
                                progress, "gradients", max_tokens or self.max_tokens, self.model)

    def _dtype(self) -> torch.dtype:
        return torch.promote_types(next(self.model.parameters()).dtype, torch.float32)

    def _queries_and_directions(self, q, dirs):
        """The state's modules (live weights) and, per module, the K = queries + directions
        parameter-space vectors ``GradientMoments`` takes inner products with: the query
        gradients as they are, then the directions as the engine prepares them
        (``engine.directions.prepare_directions``: V_A, V_B, docs/METHOD.md §3); and
        ||D_m||^2 (M, J) of the directions."""
        modules, dtype = lora_modules(self.model, self.adapter), self._dtype()
        prepared = prepare_directions(modules, dirs) if dirs else None
        queries_A, queries_B = [], []
        for m, module in enumerate(modules):
            parts_A = [q.modules[module.name][0]] if q is not None else []
            parts_B = [q.modules[module.name][1]] if q is not None else []
            if prepared is not None:
                parts_A.append(prepared.V_A[m])
                parts_B.append(prepared.V_B[m])
            queries_A.append(torch.cat([p.to(self.device, dtype) for p in parts_A]) if parts_A else None)
            queries_B.append(torch.cat([p.to(self.device, dtype) for p in parts_B]) if parts_B else None)
        dir_sq = prepared.sqnorm if prepared is not None else torch.zeros(len(modules), 0, dtype=torch.float64)
        return modules, queries_A, queries_B, dir_sq


def _is_sample(obj) -> bool:
    return isinstance(obj, dict) or all(hasattr(obj, a) for a in ("input_ids", "labels")) or hasattr(obj, "kind")
