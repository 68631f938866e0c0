"""Per-sample fields that travel with a training batch: a sample's identity and its weight.

Trainers drop what the model does not take: ``Trainer`` prunes dataset columns outside the
model's forward signature, and TRL's collators build the batch from the fields they know.
``SampleFields``, a mixin first in the bases of a ``Trainer`` subclass (TRL's
``SFTTrainer`` included), keeps the named columns through both, takes them out of the batch
before the model sees it, and hands them, with the batch, to every callback that asks
(``begin_batch(model, inputs, fields)``: the online scorer learns which sample each row
is). ``sample_index`` defaults to the row's position in the training dataset.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

SAMPLE_INDEX = "sample_index"
SAMPLE_WEIGHT = "sample_weight"


class FieldsCollator:
    """Wraps a data collator: takes ``fields`` out of each feature, collates the rest, and
    puts each field back beside the batch as a tensor. Features are dicts, or objects with
    an ``index`` (the project's tokenized samples), whose fields come from ``values``
    ({field: {index: value}}) and whose ``sample_index`` is that index."""

    def __init__(self, inner, fields: Sequence[str], values: Mapping[str, Mapping[int, Any]] | None = None):
        self.inner, self.fields, self.values = inner, tuple(fields), dict(values or {})

    def __call__(self, features: Sequence[Any]) -> dict:
        if features and not isinstance(features[0], Mapping):
            taken = {SAMPLE_INDEX: [f.index for f in features]} if SAMPLE_INDEX in self.fields else {}
            taken.update({k: [v[f.index] for f in features] for k, v in self.values.items()})
            rest = list(features)
        else:
            present = [k for k in self.fields if features and k in features[0]]
            taken = {k: [f[k] for f in features] for k in present}
            rest = [{k: v for k, v in f.items() if k not in self.fields} for f in features]
        batch = self.inner(rest)
        for k, v in taken.items():
            batch[k] = torch.tensor(v, dtype=torch.long if k == SAMPLE_INDEX else torch.float32)
        return batch


class SampleFields:
    """Mixin (see the module docstring). ``sample_fields``: the columns kept."""

    sample_fields: tuple[str, ...] = (SAMPLE_INDEX,)

    def __init__(self, *args, **kwargs):
        dataset = kwargs.get("train_dataset")
        if SAMPLE_INDEX in self.sample_fields and hasattr(dataset, "add_column") \
                and SAMPLE_INDEX not in getattr(dataset, "column_names", ()):
            kwargs["train_dataset"] = dataset.add_column(SAMPLE_INDEX, list(range(len(dataset))))
        super().__init__(*args, **kwargs)
        if not isinstance(self.data_collator, FieldsCollator):
            self.data_collator = FieldsCollator(self.data_collator, self.sample_fields)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()     # keep the fields when columns are pruned
        if self._signature_columns is not None:
            self._signature_columns = [*self._signature_columns,
                                       *(f for f in self.sample_fields if f not in self._signature_columns)]

    def _get_train_sampler(self, train_dataset=None):
        """A callback that decides which samples an epoch takes (the online drop) supplies
        the sampler; otherwise the Trainer's own."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        for callback in self.callback_handler.callbacks:
            if getattr(callback, "supplies_sampler", False):
                return callback.make_sampler(dataset, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        fields = {k: inputs.pop(k) for k in self.sample_fields if k in inputs}
        for callback in self.callback_handler.callbacks:
            if hasattr(callback, "begin_batch"):
                callback.begin_batch(model, inputs, fields)
        return self.loss_with_fields(model, inputs, fields, return_outputs, num_items_in_batch)

    def loss_with_fields(self, model, inputs, fields, return_outputs, num_items_in_batch):
        """The loss of a batch whose fields were taken out (default: the Trainer's own)."""
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)
