"""What the capture hooks reduce one module's x, h, u, e to (docs/METHOD.md §3, §4).

- :class:`PerSampleReducer`, the training side: per sample and module, from three calls of
  ``factor_grad_stats`` (the gradients are never formed)

      gram_A = G_A G_A^T, <G_A, dirs_A[k]>     (a = u, b = x, "left")
      gram_B = G_B^T G_B, <G_B, dirs_B[k]>     (a = e, b = h, "right")
      ||H^T U||_F^2                            (a = h, b = u, "frobenius")

  giving ``||G_A||^2 + ||G_B||^2 = tr gram_A + tr gram_B`` (the LoRA-parameter gradient),
  ``||dW||^2 = <gram_B, A A^T> + <gram_A, B^T B> + 2 ||H^T U||^2`` (the induced update) and
  ``<G_A, dirs_A[k]> + <G_B, dirs_B[k]>`` for every direction k at once; plus, when asked,
  Kronecker sketches (sketch.py) from the projected factors, one small bmm per module.
- :class:`SumReducer`, the query side: the gradients summed over every sample of every
  batch, ``sum G_A = U^T X`` and ``sum G_B = E^T H`` (r x d_in and d_out x r per module:
  small, so they are formed). Per-sample weights enter through the loss, not here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sqsd_fast.influence.sketch import KroneckerMaps
from sqsd_fast.ops import factor_grad_stats


@dataclass
class ModuleSpec:
    """One LoRA module of the state, with what the per-sample reducer needs of it."""

    name: str
    layer: nn.Module
    A: torch.Tensor                       # (r, d_in), live weight, detached
    B: torch.Tensor                       # (d_out, r)
    dirs_A: torch.Tensor | None = None    # (K, r, d_in): inner products <G_A, dirs_A[k]>
    dirs_B: torch.Tensor | None = None    # (K, d_out, r)
    maps: KroneckerMaps | None = None     # sketch maps, on the device

    @property
    def shape(self) -> tuple[int, int, int]:
        """(r, d_in, d_out)."""
        return self.A.shape[0], self.A.shape[1], self.B.shape[0]


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


def _common_dtype(*tensors) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


class PerSampleReducer:
    """Per-sample statistics of every module, gathered over one batch (see the module doc)."""

    def __init__(self, specs: list[ModuleSpec], backend: str):
        self.specs, self.backend = specs, backend
        self.layout: BatchLayout | None = None
        self.grad_sq, self.update_sq, self.proj, self.sketch = ([None] * len(specs) for _ in range(4))
        self.gram_AAt = [s.A.double() @ s.A.double().T for s in specs]   # once, not per batch
        self.gram_BtB = [s.B.double().T @ s.B.double() for s in specs]

    def start(self, layout: BatchLayout) -> None:
        self.layout = layout
        for store in (self.grad_sq, self.update_sq, self.proj, self.sketch):
            store[:] = [None] * len(self.specs)

    def __call__(self, slot: int, x, h, u, e) -> None:
        spec, layout, backend = self.specs[slot], self.layout, self.backend
        layout.check(spec.name, x)
        dtype = _common_dtype(x, h, u, e)
        xp, hp, up, ep = (layout.pack(t).to(dtype) for t in (x, h, u, e))
        cu = layout.cu_seqlens
        proj_A, gram_A = factor_grad_stats(up, xp, cu, spec.dirs_A, "left", backend, False)
        proj_B, gram_B = factor_grad_stats(ep, hp, cu, spec.dirs_B, "right", backend, False)
        _, cross = factor_grad_stats(hp, up, cu, None, "frobenius", backend, False)
        gram_A, gram_B = gram_A.double(), gram_B.double()
        self.grad_sq[slot] = gram_A.diagonal(dim1=1, dim2=2).sum(1) + gram_B.diagonal(dim1=1, dim2=2).sum(1)
        self.update_sq[slot] = ((gram_B * self.gram_AAt[slot]).sum((1, 2)) + (gram_A * self.gram_BtB[slot]).sum((1, 2))
                                + 2.0 * cross.double())
        self.proj[slot] = (proj_A + proj_B).double()
        if spec.maps is not None:
            self.sketch[slot] = self._sketch(spec.maps, x, h, u, e)

    def _sketch(self, maps: KroneckerMaps, x, h, u, e) -> torch.Tensor:
        # Per sample sum_t (P_u u_t)(P_x x_t)^T as one bmm over the padded (S, L, k) layout;
        # the mask zeroes padding positions (their gradients are zero anyway).
        n = self.layout.n_samples
        keep = self.layout.mask.reshape(n, -1, 1).to(maps.P_u.dtype)

        def side(t, P):
            return (t.reshape(n, -1, t.shape[-1]).to(P.dtype) @ P.T) * keep

        s_A = side(u, maps.P_u).transpose(1, 2) @ side(x, maps.P_x)    # (S, k1, k2)
        s_B = side(e, maps.P_e).transpose(1, 2) @ side(h, maps.P_h)    # (S, k2, k1)
        return torch.cat([s_A.flatten(1), s_B.flatten(1)], dim=1).double()

    def results(self, device) -> dict[str, torch.Tensor]:
        """Stacked over modules: grad_sq, update_sq (S, M), proj (S, M, K) and sketch (S, D)
        when asked; zeros for modules no gradient reached."""
        n = self.layout.n_samples
        out = {"grad_sq": self._stack(self.grad_sq, lambda s: (n,), device),
               "update_sq": self._stack(self.update_sq, lambda s: (n,), device),
               "proj": self._stack(self.proj, lambda s: (n, 0 if s.dirs_A is None else s.dirs_A.shape[0]), device)}
        if any(s.maps is not None for s in self.specs):
            parts = [v if v is not None else torch.zeros(n, 2 * s.maps.P_u.shape[0] * s.maps.P_x.shape[0],
                                                         dtype=torch.float64, device=device)
                     for s, v in zip(self.specs, self.sketch)]
            out["sketch"] = torch.cat(parts, dim=1)
        return out

    def _stack(self, values, shape_of, device) -> torch.Tensor:
        full = [v if v is not None else torch.zeros(shape_of(s), dtype=torch.float64, device=device)
                for s, v in zip(self.specs, values)]
        return torch.stack(full, dim=1)


class SumReducer:
    """``sum G_A`` and ``sum G_B`` per module over all batches it sees (float64)."""

    def __init__(self, specs: list[ModuleSpec]):
        self.specs = specs
        self.layout: BatchLayout | None = None
        self.G_A = [torch.zeros(s.A.shape, dtype=torch.float64, device=s.A.device) for s in specs]
        self.G_B = [torch.zeros(s.B.shape, dtype=torch.float64, device=s.B.device) for s in specs]

    def start(self, layout: BatchLayout) -> None:
        self.layout = layout

    def __call__(self, slot: int, x, h, u, e) -> None:
        self.layout.check(self.specs[slot].name, x)
        dtype = torch.promote_types(_common_dtype(x, h, u, e), torch.float32)
        xp, hp, up, ep = (self.layout.pack(t).to(dtype) for t in (x, h, u, e))
        self.G_A[slot] += (up.T @ xp).double()
        self.G_B[slot] += (ep.T @ hp).double()
