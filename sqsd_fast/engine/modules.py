"""The one per-module record of the engine: a LoRA module of the state a pass runs at."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sqsd_fast.models.adapters import state_modules


@dataclass(frozen=True)
class LoraModule:
    """One LoRA module of a state: its name, the peft layer holding the adapter (where the
    capture hooks go) and the live factors A (r, d_in) and B (d_out, r), detached."""

    name: str
    layer: nn.Module
    A: torch.Tensor
    B: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """(r, d_in, d_out)."""
        return self.A.shape[0], self.A.shape[1], self.B.shape[0]


def lora_modules(peft_model, adapter: str) -> list[LoraModule]:
    """Every LoRA module of ``adapter`` on ``peft_model``, in model order. Refuses what the
    engine cannot take (LoRA on embeddings, DoRA, ...; ``models.adapters.state_modules``)."""

    return [LoraModule(name, layer, layer.lora_A[adapter].weight.detach(), layer.lora_B[adapter].weight.detach())
            for name, layer in state_modules(peft_model, adapter).items()]
