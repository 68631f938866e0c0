"""Hooks that hand each LoRA module's x, h, u, e of one batch to a reducer, inside the backward.

The capture points (docs/METHOD.md §3): x = input of ``lora_A`` (after LoRA dropout),
h = input of ``lora_B``, e = gradient at the output of ``lora_B`` (it includes the LoRA
scaling: peft multiplies lora_B's output by it), u = gradient at the output of ``lora_A``
(= B^T e). The reduction is a callback: the SQSD engine projects on precomputed directions
(reducers.py: UpdateProjection), the influence verbs take Gram statistics, query gradients or sketches.
Autograd reaches lora_B's output before lora_A's, so the callback runs in u's hook, the
moment all four exist, and the activations are dropped there: those of all modules are
never held at once (docs/METHOD.md §5).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

# reduce(slot, x, h, u, e): tensors as captured, (B, L, dim), detached.
Reducer = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


def _recomputing() -> bool:
    """Whether a forward runs inside the backward: gradient checkpointing recomputing its
    layer, with the same inputs (dropout replays its random state), taken again."""
    return torch._C._current_autograd_node() is not None


class _Tap:
    """One LoRA module's activations for one forward + backward."""

    def __init__(self, slot: int, name: str, session: "TapSession"):
        self.slot, self.name, self.session = slot, name, session
        self.x = self.h = self.e = None

    def on_A_forward(self, module, args, output):
        if not output.requires_grad:
            return          # no backward will reach it (evaluation, a reentrant checkpoint's first pass)
        recomputing = _recomputing()
        if self.x is not None and not recomputing:
            raise RuntimeError(f"LoRA module {self.name} ran more than once in one forward pass (a shared "
                               "or reused layer); per-sample LoRA gradients need each module to run once")
        if recomputing or not self.session.recomputed:
            self.x = args[0]
        output.register_hook(self.on_u)

    def on_B_forward(self, module, args, output):
        if not output.requires_grad:
            return
        if not self.session.recomputed or _recomputing():
            self.h = args[0]
        output.register_hook(self.on_e)

    def on_e(self, grad):
        self.e = grad

    def on_u(self, grad):
        if self.e is None or self.x is None or self.h is None:
            raise RuntimeError(f"LoRA module {self.name}: the gradient of lora_A arrived before lora_B's")
        x, h, e = self.x.detach(), self.h.detach(), self.e.detach()
        self.x = self.h = self.e = None  # free this module's activations now
        self.session.reduce(self.slot, x, h, grad.detach(), e)


class TapSession:
    """Context manager: hooks on ``modules`` ([(name, peft LoRA layer)]) for ``adapter``.

    Inside it, one forward + backward calls ``reduce(slot, x, h, u, e)`` once per module
    that the gradient reaches (slot = the module's position in ``modules``). ``recomputed``:
    every module's layer is recomputed in the backward (gradient checkpointing), so the first
    forward keeps no x or h: they are taken from the recomputation.
    """

    def __init__(self, modules: list[tuple[str, nn.Module]], adapter: str, reduce: Reducer, *,
                 recomputed: bool = False):
        self.modules, self.adapter, self.reduce = modules, adapter, reduce
        self.recomputed = recomputed
        self._handles: list = []
        self._taps: list[_Tap] = []

    def __enter__(self):
        for name, layer in self.modules:  # checked before any hook exists, so none can leak
            if getattr(layer, "merged", False):
                raise ValueError(f"LoRA module {name} is merged into its base layer; unmerge the adapter "
                                 "(peft's unmerge_adapter) before computing per-sample gradients")
        for slot, (name, layer) in enumerate(self.modules):
            tap = _Tap(slot, name, self)
            self._taps.append(tap)
            self._handles.append(layer.lora_A[self.adapter].register_forward_hook(tap.on_A_forward))
            self._handles.append(layer.lora_B[self.adapter].register_forward_hook(tap.on_B_forward))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._taps.clear()
        return False

    def reset(self) -> None:
        """Forget what a forward left without a backward (a caller that runs passes it does
        not drive, such as a training loop, calls this before each of its passes)."""
        for tap in self._taps:
            tap.x = tap.h = tap.e = None
