"""Seeded Kronecker-factored random maps: sketches of per-sample LoRA-parameter gradients.

The idea is LoGra's (Choe et al. 2024, "What is Your Data Worth to GPT?"): the gradient of
a linear map over a sample is ``G = sum_t a_t b_t^T``, so a Kronecker-factored projection
``P_a G P_b^T = sum_t (P_a a_t)(P_b b_t)^T`` projects the small per-token factors first and
never forms G. Per LoRA module (docs/METHOD.md §3 for x, h, u, e):

    G_A = sum_t u_t x_t^T  (r x d_in)   ->  S_A = P_u G_A P_x^T  (k1 x k2)
    G_B = sum_t e_t h_t^T  (d_out x r)  ->  S_B = P_e G_B P_h^T  (k2 x k1)

with P_u, P_h (k1 x r) on the rank side and P_x (k2 x d_in), P_e (k2 x d_out) on the wide
side. Entries are independent N(0, 1/k1) on the rank side and N(0, 1/k2) on the wide side,
so ``E <S(g), S(g')> = <g, g'>``: inner products and norms are kept in expectation
(row-major ``vec S_A = (P_u kron P_x) vec G_A``).

Seeding: a module's maps come from a CPU ``torch.Generator`` seeded with the first 8 bytes
of ``sha256(f"{seed}:{module name}")``, drawn in float64 in the order P_u, P_x, P_e, P_h.
A seed therefore gives the same maps for a module on any device, whatever other modules
the adapter has.

Layout of one sample's sketch: modules in model order; per module vec S_A (k1*k2,
row-major) then vec S_B (k2*k1, row-major); ``2 * k1 * k2`` numbers per module.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KroneckerMaps:
    """One module's maps: P_u, P_h (k1, r); P_x (k2, d_in); P_e (k2, d_out)."""

    P_u: torch.Tensor
    P_x: torch.Tensor
    P_e: torch.Tensor
    P_h: torch.Tensor

    def to(self, device, dtype) -> "KroneckerMaps":
        return KroneckerMaps(*(t.to(device=device, dtype=dtype) for t in (self.P_u, self.P_x, self.P_e, self.P_h)))


def sketch_size(size, shapes: dict[str, tuple[int, int, int]]) -> dict[str, tuple[int, int]]:
    """``{module: (k1, k2)}`` from ``size`` and the modules' ``(r, d_in, d_out)``.

    ``size``: ``(k1, k2)``, or an int k meaning ``(r, k)``: no compression on the rank side,
    which is already small, and k on the wide side. Refuses a size below 1 or larger than a
    module's gradient, naming the module.
    """
    if isinstance(size, (tuple, list)) and len(size) == 2:
        pair = tuple(size)
    elif isinstance(size, int) and not isinstance(size, bool):
        pair = (None, size)
    else:
        raise ValueError(f"sketch size must be an int k or a pair (k1, k2) of ints, got {size!r}")
    for k in pair:
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"sketch size must be at least 1 on each side, got {size!r}")
    out = {}
    for name, (r, d_in, d_out) in shapes.items():
        k1, k2 = (r if pair[0] is None else pair[0]), pair[1]
        if k1 > r or k2 > min(d_in, d_out):
            raise ValueError(f"sketch size {size!r} is larger than module {name}'s gradient (G_A is {r} x {d_in}, "
                             f"G_B {d_out} x {r}): it needs k1 <= {r} and k2 <= {min(d_in, d_out)}")
        out[name] = (k1, k2)
    return out


def module_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def kronecker_maps(name: str, r: int, d_in: int, d_out: int, k1: int, k2: int, seed: int) -> KroneckerMaps:
    """The float64 CPU maps of module ``name`` (see the module docstring)."""
    gen = torch.Generator(device="cpu").manual_seed(module_seed(seed, name))

    def draw(rows, cols, k):
        return torch.randn(rows, cols, generator=gen, dtype=torch.float64) / k ** 0.5

    return KroneckerMaps(P_u=draw(k1, r, k1), P_x=draw(k2, d_in, k2), P_e=draw(k2, d_out, k2), P_h=draw(k1, r, k1))


def sketch_maps(size, shapes: dict[str, tuple[int, int, int]], seed: int = 0) -> dict[str, KroneckerMaps]:
    """``{module: KroneckerMaps}`` for ``shapes`` = ``{module: (r, d_in, d_out)}`` in model order."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"sketch seed must be an int, got {seed!r}")
    sizes = sketch_size(size, shapes)
    return {name: kronecker_maps(name, *shapes[name], *sizes[name], seed) for name in shapes}


def sketch_dense(G_A: torch.Tensor, G_B: torch.Tensor, maps: KroneckerMaps) -> torch.Tensor:
    """The sketch of one module's explicit gradients (a reference, and for query gradients):
    ``[vec(P_u G_A P_x^T), vec(P_e G_B P_h^T)]``; G_A (..., r, d_in), G_B (..., d_out, r)."""
    m = maps.to(G_A.device, torch.promote_types(G_A.dtype, torch.float32))
    s_A = m.P_u @ G_A.to(m.P_u.dtype) @ m.P_x.T
    s_B = m.P_e @ G_B.to(m.P_u.dtype) @ m.P_h.T
    return torch.cat([s_A.flatten(-2), s_B.flatten(-2)], dim=-1)
