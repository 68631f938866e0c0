"""Hooks that turn one forward + backward into every LoRA module's per-sample statistics.

For each LoRA module of the active state, forward hooks on ``lora_A[state]`` and
``lora_B[state]`` keep references to x (input of lora_A, after lora dropout) and h
(input of lora_B), and put tensor hooks on their outputs: u (gradient at the output of
lora_A) and e (gradient at the output of lora_B; it includes the LoRA scaling because
peft multiplies lora_B's output by it). Autograd reaches lora_B's output gradient first
and lora_A's right after, so the statistics are computed in u's hook, as soon as both
exist, and the four activations are dropped there (docs/METHOD.md §5). Results stay on the
device until the batch ends: no host sync per module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sqsd_fast.ops import lora_update_stats_projected


@dataclass
class ModuleProjection:
    """What scoring needs of one module at one (state, direction) pair, precomputed once."""

    name: str
    lora_A: nn.Module  # the state's lora_A[state] Linear
    lora_B: nn.Module
    A: torch.Tensor  # (r, d_in), the live weight
    B: torch.Tensor  # (d_out, r)
    V_A: torch.Tensor  # (K, r, d_in) = (B^T B_d) A_d
    V_B: torch.Tensor  # (K, d_out, r) = B_d (A_d A^T)


class _ModuleCapture:
    """Captures one LoRA module's x, h, u, e for one batch and reduces them in backward."""

    def __init__(self, slot: int, spec: ModuleProjection, session: "CaptureSession"):
        self.slot, self.spec, self.session = slot, spec, session
        self.x = self.h = self.e = None

    def on_A_forward(self, module, args, output):
        if self.x is not None:
            raise RuntimeError(
                f"LoRA module {self.spec.name} ran more than once in one forward pass (shared or reused layer); "
                "SQSD scoring needs each LoRA module to run once per forward"
            )
        self.x = args[0]
        if output.requires_grad:
            output.register_hook(self.on_u)

    def on_B_forward(self, module, args, output):
        self.h = args[0]
        if output.requires_grad:
            output.register_hook(self.on_e)

    def on_e(self, grad):
        self.e = grad

    def on_u(self, grad):
        if self.e is None or self.x is None or self.h is None:
            raise RuntimeError(f"LoRA module {self.spec.name}: the gradient of lora_A arrived before lora_B's")
        session = self.session
        x, h, u, e = (session.pack(t) for t in (self.x, self.h, grad, self.e))
        self.x = self.h = self.e = None  # free the batch's activations of this module now
        dtype = x.dtype
        for t in (h, u, e):
            dtype = torch.promote_types(dtype, t.dtype)
        x, h, u, e = (t.to(dtype) for t in (x, h, u, e))
        spec = self.spec
        dot, sqnorm = lora_update_stats_projected(
            x, h, u, e, session.cu_seqlens, spec.A, spec.B, spec.V_A, spec.V_B,
            backend=session.backend, check_inputs=False,
        )
        session.dot[self.slot] = dot
        session.sqnorm[self.slot] = sqnorm


class CaptureSession:
    """Context manager: hooks on every module in ``specs`` for one forward + backward.

    Call :meth:`set_rows` before the forward with the packing of the batch: ``rows``
    (indices of the non-padding positions in the flattened (B*L) batch, or None when
    there is no padding) and ``cu_seqlens`` (S+1,) int64 on the model's device.
    After the backward, :meth:`results` gives ``dot`` (S, M, K) and ``sqnorm`` (S, M),
    float32 on the device, zeros for modules no gradient reached.
    """

    def __init__(self, specs: list[ModuleProjection], backend: str):
        self.specs, self.backend = specs, backend
        self.rows = self.cu_seqlens = None
        self.dot: list = [None] * len(specs)
        self.sqnorm: list = [None] * len(specs)
        self._handles: list = []

    def set_rows(self, rows: torch.Tensor | None, cu_seqlens: torch.Tensor) -> None:
        self.rows, self.cu_seqlens = rows, cu_seqlens

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        flat = t.detach().reshape(-1, t.shape[-1])
        return flat if self.rows is None else flat.index_select(0, self.rows)

    def __enter__(self):
        for slot, spec in enumerate(self.specs):
            capture = _ModuleCapture(slot, spec, self)
            self._handles.append(spec.lora_A.register_forward_hook(capture.on_A_forward))
            self._handles.append(spec.lora_B.register_forward_hook(capture.on_B_forward))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return False

    def results(self, n_samples: int, n_directions: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        zeros_dot = torch.zeros((n_samples, n_directions), dtype=torch.float32, device=device)
        zeros_sq = torch.zeros((n_samples,), dtype=torch.float32, device=device)
        dot = torch.stack([d if d is not None else zeros_dot for d in self.dot], dim=1)
        sqnorm = torch.stack([s if s is not None else zeros_sq for s in self.sqnorm], dim=1)
        return dot, sqnorm
