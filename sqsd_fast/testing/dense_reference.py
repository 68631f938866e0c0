"""The authors' SQSD projection, dense and batch 1, re-written from docs/METHOD.md §1.

The oracle that fast paths are checked against (tests/test_smollm2_parity.py) and the
baseline the benchmarks time (benchmarks/authors_algorithm.py re-exports it):

- batch size 1, one forward + backward per sample, loss = the model's mean token
  cross-entropy over the response tokens (prompt labels are -100);
- per LoRA module m, the dense induced update ``dW_m = -(G_B A + B G_A)`` (d_out x d_in)
  from the state's factor gradients, and the dense direction ``D_m = B_d A_d`` (scaling
  dropped), both formed for every module and every sample as their code does;
- ``P(z) = sum_m cos(vec dW_m, vec D_m)`` (and the unnormalized ``dot`` / ``projection``).

Written from the description, not from their code; where the description leaves a
choice open (e.g. how gradients are zeroed), the cheapest faithful choice is taken.
It shares no code with ``sqsd_fast.scoring``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AuthorsProjection:
    indices: list[int]
    module_names: list[str]
    dot: torch.Tensor             # (S, M) float64: <dW_m, D_m>
    update_sqnorm: torch.Tensor   # (S, M) float64: ||dW_m||^2
    direction_sqnorm: torch.Tensor  # (M,) float64: ||D_m||^2
    status: list[str]

    def total(self, metric: str = "cosine") -> torch.Tensor:
        if metric == "dot":
            per = self.dot
        elif metric == "projection":
            per = self.dot / self.direction_sqnorm.sqrt()
        elif metric == "cosine":
            per = self.dot / (self.update_sqnorm.sqrt() * self.direction_sqnorm.sqrt())
        else:
            raise ValueError(f"metric must be cosine, dot or projection, got {metric!r}")
        out = per.sum(dim=1)
        bad = torch.tensor([s != "ok" for s in self.status], dtype=torch.bool)
        return out.masked_fill(bad, float("nan"))


def lora_modules(peft_model, state: str):
    """(name, module) of every PEFT LoRA layer that has the adapter ``state``."""
    found = []
    for name, module in peft_model.named_modules():
        lora_A = getattr(module, "lora_A", None)
        if isinstance(lora_A, torch.nn.ModuleDict) and state in lora_A:
            found.append((name, module))
    if not found:
        raise ValueError(f"no LoRA module carries the adapter {state!r}")
    return found


def authors_project(peft_model, samples, *, state: str, direction: str,
                    device: torch.device | str = "cpu") -> AuthorsProjection:
    """Project every sample's induced update on ``direction`` at ``state``, one at a time.

    ``samples``: objects with ``index``, ``input_ids``, ``labels`` (TokenizedSample).
    ``peft_model``: a PeftModel holding both adapters; ``state`` is made the active one.
    """
    device = torch.device(device)
    peft_model.set_adapter(state)
    for name, p in peft_model.named_parameters():  # only the state's factors require grad
        p.requires_grad_(("lora_A." + state + ".") in name or ("lora_B." + state + ".") in name)
    modules = lora_modules(peft_model, state)
    names = [n for n, _ in modules]
    S, M = len(samples), len(modules)
    dot = torch.zeros(S, M, dtype=torch.float64)
    upd = torch.zeros(S, M, dtype=torch.float64)
    dsq = torch.zeros(M, dtype=torch.float64)
    status = []
    for i, sample in enumerate(samples):
        ids = torch.tensor([sample.input_ids], dtype=torch.long, device=device)
        labels = torch.tensor([sample.labels], dtype=torch.long, device=device)
        if not any(label != -100 for label in sample.labels[1:]):
            status.append("no_response_tokens")
            continue
        peft_model.zero_grad(set_to_none=True)
        loss = peft_model(input_ids=ids, labels=labels).loss
        loss.backward()
        with torch.no_grad():
            for m, (_, module) in enumerate(modules):
                # float32 math (a no-op for fp32 models) so bf16 runs compare at bf16-gradient accuracy
                A = module.lora_A[state].weight.float()
                B = module.lora_B[state].weight.float()
                G_A = module.lora_A[state].weight.grad.float()
                G_B = module.lora_B[state].weight.grad.float()
                dW = -(G_B @ A + B @ G_A)                                   # (d_out, d_in)
                D = module.lora_B[direction].weight.float() @ module.lora_A[direction].weight.float()
                dot[i, m] = (dW * D).sum().double()
                upd[i, m] = dW.square().sum().double()
                dsq[m] = D.square().sum().double()
        status.append("ok" if bool(torch.isfinite(upd[i]).all()) and bool((upd[i] > 0).any())
                      else "zero_update")
    peft_model.zero_grad(set_to_none=True)
    return AuthorsProjection([s.index for s in samples], names, dot, upd, dsq, status)
