"""Scoring borrows the caller's model for one pass at a time and gives it back unchanged.

A pass needs the state's adapter active, every parameter frozen (gradients are taken with
respect to the input embeddings; the hooks capture the rest), eval mode (no dropout) and,
for the safety state, the LoRA scaling overridden. A caller who hands in a ``PeftModel``
(``SQSDScorer.from_peft_model``) must not find their trainable flags, train/eval mode,
active adapter or scalings changed afterwards, so every pass runs inside
:meth:`ModelSettings.scoring`, which records those four things and restores them.
"""
from __future__ import annotations

from contextlib import contextmanager


class ModelSettings:
    """What a scoring pass changes on ``peft_model``, applied for the pass and undone after.

    ``scalings``: {adapter name: LoRA scaling to use while that adapter is scored}.
    """

    def __init__(self, peft_model, scalings: dict[str, float] | None = None):
        self.model = peft_model
        self.scalings = dict(scalings or {})
        self.checkpointing = False   # recompute each decoder layer in the backward (check_checkpointing)

    @contextmanager
    def scoring(self, adapter: str):
        # A run makes one or two passes per batch, so this is paid per batch: a module walk
        # of a 30-layer model costs milliseconds, peft's set_adapter tens of them (a batch on a
        # GPU costs about as much). So the modules are walked once, and only what differs
        # from the pass's settings is changed: between the batches of a run (the adapter
        # already active, eval mode, weights frozen) little is left to do.
        model = self.model
        modules = list(model.modules())
        params = list(model.parameters())
        trainable = [p.requires_grad for p in params]
        training = [m.training for m in modules]
        active = model.active_adapter
        if isinstance(active, (list, tuple)) and len(active) == 1:
            active = active[0]
        scaled = [(layer, layer.scaling[adapter]) for layer in _lora_layers(modules, adapter)] \
            if adapter in self.scalings else []
        try:
            if active != adapter:
                model.set_adapter(adapter)
            for p in params:
                if p.requires_grad:
                    p.requires_grad_(False)     # set_adapter makes the adapter trainable
            if any(training):
                model.eval()
            for layer, _ in scaled:
                layer.scaling[adapter] = self.scalings[adapter]
            was_checkpointing = self._checkpointing_on() if self.checkpointing else None
            yield
        finally:
            if self.checkpointing and was_checkpointing is False:
                _base(model).activation_checkpointing_disable()
            for layer, value in scaled:
                layer.scaling[adapter] = value
            if model.active_adapter != active:
                model.set_adapter(active)
            for p, flag in zip(params, trainable):
                if p.requires_grad != flag:
                    p.requires_grad_(flag)
            for m, flag in zip(modules, training):
                if m.training != flag:
                    m.training = flag

    def check_checkpointing(self) -> None:
        """Refuse a model that cannot recompute its layers, naming it."""
        base = _base(self.model)
        if not getattr(base, "supports_gradient_checkpointing", False) or not _checkpointed_layers(base):
            raise ValueError(f"--gradient-checkpointing: {type(base).__name__} does not support gradient "
                             "checkpointing (transformers' supports_gradient_checkpointing); score without it")

    def _checkpointing_on(self) -> bool:
        """Turn transformers' activation checkpointing on for the pass (non-reentrant: the
        frozen weights need no input that requires grad) and put the decoder layers, and
        only them, in training mode, which is when they checkpoint: every other module,
        dropout included, stays in eval mode. Returns whether it was on before."""
        base = _base(self.model)
        layers = _checkpointed_layers(base)
        was_on = any(layer.gradient_checkpointing for layer in layers)
        if not was_on:
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        for layer in layers:
            layer.training = True
        return was_on


def _lora_layers(modules, adapter: str) -> list:
    from peft.tuners.lora import LoraLayer
    return [m for m in modules if isinstance(m, LoraLayer) and adapter in getattr(m, "scaling", {})]


def _base(peft_model):
    return peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model


def _checkpointed_layers(model) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
