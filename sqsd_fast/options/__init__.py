"""What a user can ask each command for, checked before anything loads: one dataclass per
command.

The same dataclass is the CLI's parser (``transformers.HfArgumentParser`` builds it from
the fields and their ``help``), the Python API's argument list (``score_file(**options)``)
and the resume fingerprint: every field is part of the fingerprint unless it is listed in
``NOT_FINGERPRINTED`` because it cannot change a score. A new option is therefore parsed,
checked and fingerprinted without anyone remembering to. Values are checked when the
dataclass is built; a bad one raises :class:`OptionError` naming the field.

- ``base``: the mechanism (``option``, ``CheckedOptions``, ``OptionError``);
- ``groups``: what several commands share (record fields, quantized base, ``RunOptions``);
- ``score``, ``baseline``, ``files``, ``train_adapter`` (transformers' TrainingArguments, loaded
  when asked for; its value checks in ``train_checks``), ``merge_adapter``, ``evaluate``: the
  commands' own;
- ``checks``: checks of user-given paths and devices, made before a model loads.
"""
from sqsd_fast.options.base import CheckedOptions, OptionError, check_named_directions, option, required_option
from sqsd_fast.options.baseline import (BASELINE_COLUMNS, GRADIENT_METHODS, GRADMATCH_RESPONSE_TOKENS, METHODS,
                                        AnchorDirectionOptions, BaselineOptions)
from sqsd_fast.options.evaluate import JUDGES, EvaluateOptions
from sqsd_fast.options.files import FetchModelOptions, FilterOptions, SubsetsOptions
from sqsd_fast.options.groups import QuantizedBaseOptions, RecordFieldOptions, RunOptions
from sqsd_fast.options.score import ProjectOptions, ScoreOptions
from sqsd_fast.options.merge_adapter import MergeAdapterOptions
from sqsd_fast.options.train_checks import LORA_DEFAULTS


def __getattr__(name: str):
    # TrainAdapterOptions subclasses transformers' TrainingArguments (about 3 s to import):
    # loaded when asked for, so that the scoring commands' options stay light.
    if name == "TrainAdapterOptions":
        from sqsd_fast.options.train_adapter import TrainAdapterOptions  # noqa: PLC0415 (lazy: transformers)
        return TrainAdapterOptions
    raise AttributeError(f"module 'sqsd_fast.options' has no attribute {name!r}")


__all__ = [
    "BASELINE_COLUMNS", "GRADIENT_METHODS", "GRADMATCH_RESPONSE_TOKENS", "JUDGES", "LORA_DEFAULTS", "METHODS",
    "AnchorDirectionOptions", "BaselineOptions", "CheckedOptions", "EvaluateOptions", "FetchModelOptions",
    "FilterOptions", "MergeAdapterOptions", "OptionError", "ProjectOptions", "QuantizedBaseOptions",
    "RecordFieldOptions", "RunOptions", "ScoreOptions", "SubsetsOptions", "TrainAdapterOptions",
    "check_named_directions", "option", "required_option",
]
