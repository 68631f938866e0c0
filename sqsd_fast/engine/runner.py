"""The one batch runner: a batch through the model at one LoRA state, the reducers inside.

A batch's loss is ``sum_s w_s * mean CE_s``: each sample's mean cross-entropy over its
response tokens (causal shift, -100 labels masked), weighted by ``w_s`` (1 unless given; the
query side uses weights for means and normalized sums). Samples do not interact inside a
batch (attention is per row; the base weights are frozen), so one backward gives every
sample exactly the gradients it would get alone at batch size 1, as in the authors'
algorithm (docs/METHOD.md §1). Gradients are taken with respect to the input embeddings
only: the capture hooks (taps.py) hand each LoRA module's x, h, u, e to the reducers
(reducers.py) and no parameter ``.grad`` is written. The caller's model is borrowed for the
pass and given back unchanged (model_state.py).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from sqsd_fast.data.tokenize import count_response_tokens
from sqsd_fast.engine.model_state import ModelSettings
from sqsd_fast.engine.modules import LoraModule
from sqsd_fast.engine.reducers import BatchLayout, Reducer
from sqsd_fast.engine.taps import TapSession
from sqsd_fast.engine.batch_pass import loss_head, pack_batch, response_loss
from sqsd_fast.ops import resolve_backend


@dataclass
class BatchOutput:
    """What one batch gave: ``values`` {name: float64 CPU tensor, first dim = the batch's
    samples} (zeros on rows that were not run), ``ran`` (whether each sample went through
    the model: it has a response token) and ``finite_loss`` (False also where not run)."""

    values: dict[str, torch.Tensor]
    ran: list[bool]
    finite_loss: list[bool]


class BatchRunner:
    """Runs batches of ``peft_model`` at any of its LoRA states.

    Args:
        peft_model: the ``PeftModel``; each pass activates the state, freezes every
            parameter, sets eval mode and the state's scaling override (``scalings``:
            {adapter: LoRA scaling}), and restores the caller's settings afterwards.
        pad_token_id: padding id for collation (any id works: padding is masked and dropped).
        backend: the kernel backend of the reducers run on this model ("auto", "reference",
            "cpp", "triton"): resolved once for the model's device into ``self.backend``
            (a named one that cannot run there is refused now, not at the first batch).
    """

    def __init__(self, peft_model, *, pad_token_id: int = 0, scalings: dict[str, float] | None = None,
                 backend: str = "auto"):
        self.model = peft_model
        self.settings = ModelSettings(peft_model, scalings)
        self.pad_token_id = int(pad_token_id)
        self.device = next(peft_model.parameters()).device
        self.backend = resolve_backend(backend, self.device)
        self._loss_head = loss_head(peft_model)

    def use_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each decoder layer's forward in the backward (gradient checkpointing):
        the capture hooks take x and h from the recomputed forward, so the LoRA inputs of
        every layer are not held through the whole pass. Scores do not change. A model
        without checkpointing support is refused (``ValueError``)."""
        if enabled:
            self.settings.check_checkpointing()
        self.settings.checkpointing = bool(enabled)

    def run(self, batch, adapter: str, modules: list[LoraModule], reducer: Reducer,
            weights: list[float] | None = None) -> BatchOutput:
        """One forward + backward of the samples of ``batch`` that have a response token,
        at ``adapter``, with ``reducer`` on ``modules`` (their order = the reducer's slots).
        ``weights``: one per sample of ``batch`` (None: all 1)."""
        for sample in batch:
            if len(sample.labels) != len(sample.input_ids):
                raise ValueError(f"sample {sample.index}: {len(sample.input_ids)} input_ids but "
                                 f"{len(sample.labels)} labels")
        ran = [count_response_tokens(s.labels) > 0 for s in batch]
        rows = [i for i, r in enumerate(ran) if r]
        values: dict[str, torch.Tensor] = {}
        finite = [False] * len(batch)
        if rows:
            w = None if weights is None else [weights[i] for i in rows]
            part, part_finite = self._forward_backward([batch[i] for i in rows], adapter, modules, reducer, w)
            index = torch.tensor(rows, dtype=torch.long)
            for name, value in part.items():
                full = torch.zeros((len(batch), *value.shape[1:]), dtype=torch.float64)
                full[index] = value
                values[name] = full
            for i, ok in zip(rows, part_finite):
                finite[i] = ok
        return BatchOutput(values, ran, finite)

    def _forward_backward(self, samples, adapter, modules, reducer, weights):
        batch = pack_batch(samples, self.pad_token_id, self.device)
        reducer.start(BatchLayout(batch.rows, batch.cu_seqlens, batch.mask))
        # With checkpointing, every layer must be recomputed to its end (torch stops a
        # recomputation early once the tensors autograd saved are back, before the LoRA
        # modules whose x and h the hooks take from it).
        full_recompute = torch.utils.checkpoint.set_checkpoint_early_stop(False) \
            if self.settings.checkpointing else contextlib.nullcontext()
        with self.settings.scoring(adapter), torch.enable_grad(), full_recompute, \
                TapSession([(m.name, m.layer) for m in modules], adapter, reducer,
                           recomputed=self.settings.checkpointing):
            embeds = self.model.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
            per_sample = response_loss(self.model, embeds, batch, self._loss_head)
            loss = per_sample if weights is None else \
                per_sample * torch.tensor(weights, dtype=torch.float64).to(per_sample.device, per_sample.dtype)
            torch.autograd.grad(loss.sum(), embeds)
        results = reducer.results(self.device)
        n = batch.size
        # The batch's one host sync: every statistic and the loss come back in one copy.
        flat = [v.reshape(n, -1).double() for v in results.values()]
        packed = torch.cat(flat + [per_sample.detach().float().double().unsqueeze(1)], dim=1).cpu()
        out, start = {}, 0
        for (name, value), part in zip(results.items(), flat):
            out[name] = packed[:, start:start + part.shape[1]].reshape(value.shape)
            start += part.shape[1]
        return out, torch.isfinite(packed[:, start]).tolist()
