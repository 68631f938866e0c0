"""What the capture hooks reduce each LoRA module's x, h, u, e to, inside the backward pass.

Every statistic of the engine is a reducer with the same three calls (docs/METHOD.md §3, §4):
``start(layout)`` when a batch begins, ``reducer(slot, x, h, u, e)`` once per module the
gradient reaches (``slot`` = the module's position in the pass's module list), and
``results(device)``: per-sample tensors, first dimension the batch's samples, stacked over
modules, zeros for modules no gradient reached. The batch runner (runner.py) drives them.

- :class:`UpdateProjection` (SQSD): ``<dW_m, D_k>`` against K precomputed rank-r directions
  and ``||dW_m||^2`` of the induced update, with ``lora_update_stats_projected``.
- :class:`GradientMoments` (norms and queries): three ``factor_grad_stats`` calls give
  ``||G_A||^2 + ||G_B||^2`` (the LoRA-parameter gradient), ``||dW||^2`` and
  ``<G_A, Q_A[k]> + <G_B, Q_B[k]>`` for K parameter-space queries at once. Norms and queries
  share one reducer because they share the kernel calls (the queries ride on the Gram passes).
- :class:`KroneckerSketch`: random projections of each sample's LoRA-parameter gradient.
- :class:`GradientSum` (the query side): ``sum G_A`` and ``sum G_B`` over every sample of
  every batch (small r x d matrices, so formed); its result is kept on the reducer.
- :class:`Reducers`: several of these in one pass.
No reducer forms a per-sample gradient.
"""
from __future__ import annotations

from typing import Protocol

import torch

from sqsd_fast.engine.directions import prepare_directions
from sqsd_fast.engine.modules import LoraModule
from sqsd_fast.engine.sketch import KroneckerMaps
from sqsd_fast.ops import factor_grad_stats, lora_update_stats_projected, resolve_backend
from sqsd_fast.ops.api import update_sqnorm_from_grams


class BatchLayout:
    """How one batch's (B, L) positions pack into samples: ``rows`` (indices of the real
    positions in the flattened batch, None without padding), ``cu_seqlens`` (S+1,) and the
    (B, L) ``mask``, all on the model's device."""

    def __init__(self, rows, cu_seqlens, mask):
        self.rows, self.cu_seqlens, self.mask = rows, cu_seqlens, mask
        self.n_samples = mask.shape[0]

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(-1, t.shape[-1])
        return flat if self.rows is None else flat.index_select(0, self.rows)

    def check(self, name: str, x: torch.Tensor) -> None:
        """A module must see every position of the batch once (not, e.g., only the positions
        whose logits are kept, as a LoRA on the output layer does)."""
        if x.shape[:-1].numel() != self.mask.numel():
            raise ValueError(f"LoRA module {name} sees {x.shape[:-1].numel()} positions, not the batch's "
                             f"{self.mask.shape[0]} x {self.mask.shape[1]} (a LoRA on the output layer?); "
                             "per-sample statistics need LoRA modules inside the transformer layers")


class Reducer(Protocol):
    """The interface every reducer has (see the module docstring)."""

    def start(self, layout: BatchLayout) -> None: ...

    def __call__(self, slot: int, x: torch.Tensor, h: torch.Tensor, u: torch.Tensor, e: torch.Tensor) -> None: ...

    def results(self, device) -> dict[str, torch.Tensor]: ...


def common_dtype(*tensors, at_least: torch.dtype | None = None) -> torch.dtype:
    dtype = at_least if at_least is not None else tensors[0].dtype
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _stack(values: list, shape_of, dtype, device) -> torch.Tensor:
    """Per-module results stacked on dim 1; zeros where no gradient reached a module."""
    return torch.stack([v if v is not None else torch.zeros(shape_of(i), dtype=dtype, device=device)
                        for i, v in enumerate(values)], dim=1)


class _PerModule:
    """The shared part: the module list, the batch layout and the packing of x, h, u, e."""

    def __init__(self, modules: list[LoraModule]):
        self.modules = modules
        self.layout: BatchLayout | None = None

    def start(self, layout: BatchLayout) -> None:
        self.layout = layout
        self.clear()

    def clear(self) -> None:
        pass

    def packed(self, slot: int, x, h, u, e, at_least: torch.dtype | None = None):
        """The batch's real positions of x, h, u, e as (N, dim) in one dtype."""
        self.layout.check(self.modules[slot].name, x)
        dtype = common_dtype(x, h, u, e, at_least=at_least)
        return tuple(self.layout.pack(t.detach()).to(dtype) for t in (x, h, u, e))


class UpdateProjection(_PerModule):
    """SQSD's statistic: per sample and module, ``<dW_m, D_k>`` for the K stacked directions
    (V_A (K, r, d_in), V_B (K, d_out, r) per module: ``ops.project_directions``) and
    ``||dW_m||^2``. Results: ``dot`` (S, M, K), ``update_sq`` (S, M), float32 on the device;
    nothing leaves the device until the batch ends."""

    def __init__(self, modules: list[LoraModule], V_A: list[torch.Tensor], V_B: list[torch.Tensor], backend: str):
        super().__init__(modules)
        self.V_A, self.V_B, self.backend = V_A, V_B, backend
        self.k = V_A[0].shape[0] if V_A else 0

    def clear(self) -> None:
        self.dot: list = [None] * len(self.modules)
        self.update_sq: list = [None] * len(self.modules)

    def __call__(self, slot: int, x, h, u, e) -> None:
        x, h, u, e = self.packed(slot, x, h, u, e)
        module = self.modules[slot]
        self.dot[slot], self.update_sq[slot] = lora_update_stats_projected(
            x, h, u, e, self.layout.cu_seqlens, module.A, module.B, self.V_A[slot], self.V_B[slot],
            backend=self.backend, check_inputs=False)

    def results(self, device) -> dict[str, torch.Tensor]:
        n = self.layout.n_samples
        return {"dot": _stack(self.dot, lambda i: (n, self.k), torch.float32, device),
                "update_sq": _stack(self.update_sq, lambda i: (n,), torch.float32, device)}


def projection_reducer(modules: list[LoraModule], directions, backend: str) -> tuple[UpdateProjection, torch.Tensor]:
    """The :class:`UpdateProjection` of ``modules`` (the state, as its factors are now) onto
    K directions (``[{module: LoraFactors}]``), and ``||D_mk||^2`` (M, K) float64 on the CPU.

    ``<dW_m, D> = <-(G_B A + B G_A), D>`` is linear in the per-sample factor gradients, so
    each direction is mapped once to the state's rank (``directions.prepare_directions``:
    V_A, V_B depend on the state's A and B, rebuild after the state changes); directions
    may differ in rank. ``backend``: a kernel backend name, or "auto" (resolved for the
    modules' device)."""
    if backend == "auto" and modules:
        backend = resolve_backend(backend, modules[0].A.device)
    prepared = prepare_directions(modules, directions)
    return UpdateProjection(modules, prepared.V_A, prepared.V_B, backend), prepared.sqnorm


class GradientMoments(_PerModule):
    """Per sample and module: ``grad_sq`` = ||G_A||^2 + ||G_B||^2, ``update_sq`` = ||dW||^2
    and ``proj`` (S, M, K) = <G_A, Q_A[k]> + <G_B, Q_B[k]> (``queries_A`` (K, r, d_in) and
    ``queries_B`` (K, d_out, r) per module, or None), all float64, from

        gram_A = G_A G_A^T, <G_A, Q_A[k]>     (a = u, b = x, "left")
        gram_B = G_B^T G_B, <G_B, Q_B[k]>     (a = e, b = h, "right")
        ||H^T U||_F^2                         (a = h, b = u, "frobenius")

    with ``||dW||^2 = <gram_B, A A^T> + <gram_A, B^T B> + 2 ||H^T U||^2``."""

    def __init__(self, modules: list[LoraModule], backend: str, queries_A: list | None = None,
                 queries_B: list | None = None):
        super().__init__(modules)
        self.backend = backend
        self.queries_A = queries_A or [None] * len(modules)
        self.queries_B = queries_B or [None] * len(modules)
        self.gram_AAt = [m.A.double() @ m.A.double().T for m in modules]   # once, not per batch
        self.gram_BtB = [m.B.double().T @ m.B.double() for m in modules]

    def clear(self) -> None:
        self.grad_sq, self.update_sq, self.proj = ([None] * len(self.modules) for _ in range(3))

    def __call__(self, slot: int, x, h, u, e) -> None:
        xp, hp, up, ep = self.packed(slot, x, h, u, e)
        cu, backend = self.layout.cu_seqlens, self.backend
        proj_A, gram_A = factor_grad_stats(up, xp, cu, self.queries_A[slot], "left", backend, False)
        proj_B, gram_B = factor_grad_stats(ep, hp, cu, self.queries_B[slot], "right", backend, False)
        _, cross = factor_grad_stats(hp, up, cu, None, "frobenius", backend, False)
        gram_A, gram_B = gram_A.double(), gram_B.double()
        self.grad_sq[slot] = gram_A.diagonal(dim1=1, dim2=2).sum(1) + gram_B.diagonal(dim1=1, dim2=2).sum(1)
        self.update_sq[slot] = update_sqnorm_from_grams(gram_A, gram_B, cross.double(), self.gram_AAt[slot],
                                                        self.gram_BtB[slot])
        self.proj[slot] = (proj_A + proj_B).double()

    def results(self, device) -> dict[str, torch.Tensor]:
        n = self.layout.n_samples
        k = [0 if q is None else q.shape[0] for q in self.queries_A]
        return {"grad_sq": _stack(self.grad_sq, lambda i: (n,), torch.float64, device),
                "update_sq": _stack(self.update_sq, lambda i: (n,), torch.float64, device),
                "proj": _stack(self.proj, lambda i: (n, k[i]), torch.float64, device)}


class KroneckerSketch(_PerModule):
    """``sketch`` (S, D): per module sum_t (P_u u_t)(P_x x_t)^T and sum_t (P_e e_t)(P_h h_t)^T,
    flattened (D = 2 k1 k2 per module; ``maps``: one :class:`KroneckerMaps` per module, on the
    device), float64. One small bmm per module over the padded (S, L, k) layout; the mask
    zeroes padding positions (their gradients are zero anyway)."""

    def __init__(self, modules: list[LoraModule], maps: list[KroneckerMaps]):
        super().__init__(modules)
        self.maps = maps
        self.widths = [2 * m.P_u.shape[0] * m.P_x.shape[0] for m in maps]

    def clear(self) -> None:
        self.sketch: list = [None] * len(self.modules)

    def __call__(self, slot: int, x, h, u, e) -> None:
        self.layout.check(self.modules[slot].name, x)
        maps, n = self.maps[slot], self.layout.n_samples
        keep = self.layout.mask.reshape(n, -1, 1).to(maps.P_u.dtype)

        def side(t, P):
            return (t.detach().reshape(n, -1, t.shape[-1]).to(P.dtype) @ P.T) * keep

        s_A = side(u, maps.P_u).transpose(1, 2) @ side(x, maps.P_x)    # (S, k1, k2)
        s_B = side(e, maps.P_e).transpose(1, 2) @ side(h, maps.P_h)    # (S, k2, k1)
        self.sketch[slot] = torch.cat([s_A.flatten(1), s_B.flatten(1)], dim=1).double()

    def results(self, device) -> dict[str, torch.Tensor]:
        n = self.layout.n_samples
        return {"sketch": torch.cat([v if v is not None else torch.zeros(n, w, dtype=torch.float64, device=device)
                                     for v, w in zip(self.sketch, self.widths)], dim=1)}


class GradientSum(_PerModule):
    """``G_A[m]`` = sum G_A and ``G_B[m]`` = sum G_B per module over every batch it sees
    (float64; per-sample weights enter through the loss, not here). No per-sample results."""

    def __init__(self, modules: list[LoraModule]):
        super().__init__(modules)
        self.G_A = [torch.zeros(m.A.shape, dtype=torch.float64, device=m.A.device) for m in modules]
        self.G_B = [torch.zeros(m.B.shape, dtype=torch.float64, device=m.B.device) for m in modules]

    def __call__(self, slot: int, x, h, u, e) -> None:
        xp, hp, up, ep = self.packed(slot, x, h, u, e, at_least=torch.float32)
        self.G_A[slot] += (up.T @ xp).double()
        self.G_B[slot] += (ep.T @ hp).double()

    def results(self, device) -> dict[str, torch.Tensor]:
        return {}


class Reducers:
    """Several reducers in one pass; their results merged (names must not collide, except
    ``update_sq``: every reducer that computes it uses the one identity,
    ``ops.api.update_sqnorm_from_grams``, UpdateProjection in float32 as SQSD's scores
    always have, GradientMoments in float64; the later reducer's is kept)."""

    def __init__(self, *reducers):
        self.reducers = [r for r in reducers if r is not None]

    def start(self, layout: BatchLayout) -> None:
        for r in self.reducers:
            r.start(layout)

    def __call__(self, slot: int, x, h, u, e) -> None:
        for r in self.reducers:
            r(slot, x, h, u, e)

    def results(self, device) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for r in self.reducers:
            out.update(r.results(device))
        return out
