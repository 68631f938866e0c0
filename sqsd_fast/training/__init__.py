"""LoRA supervised fine-tuning for the SQSD workflow (``train-adapter``).

``train_adapter(**options) -> TrainResult`` trains and saves a peft LoRA adapter that the
scoring commands accept; ``TrainAdapterOptions`` is its option list (and the CLI's parser);
``format_summary(result)`` describes a finished run in a few lines; ``DriftMonitor`` is a
Trainer callback logging how far the LoRA update points along direction adapters.
"""


def __getattr__(name: str):
    if name == "TrainAdapterOptions":    # transformers' TrainingArguments: only when asked for
        from sqsd_fast.options.train_adapter import TrainAdapterOptions  # noqa: PLC0415 (lazy: transformers)
        return TrainAdapterOptions
    # train.py pulls in transformers' Trainer; import it only when asked for.
    if name == "train_adapter":
        from sqsd_fast.training.train import train_adapter  # noqa: PLC0415 (lazy: transformers only when asked)
        return train_adapter
    if name == "DriftMonitor":
        from sqsd_fast.training.drift import DriftMonitor  # noqa: PLC0415 (lazy: transformers only when asked)
        return DriftMonitor
    if name in ("format_summary", "TrainResult"):
        from sqsd_fast.training import result  # noqa: PLC0415 (lazy: transformers only when asked)
        return getattr(result, name)
    raise AttributeError(f"module 'sqsd_fast.training' has no attribute {name!r}")


__all__ = ["DriftMonitor", "TrainAdapterOptions", "TrainResult", "format_summary", "train_adapter"]
