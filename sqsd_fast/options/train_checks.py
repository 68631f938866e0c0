"""Values of train-adapter's options: the LoRA defaults, the schedules it offers and the
checks of its values. Light (no transformers), so that the monitor's actions, the LoRA
defaults and the schedule names can be read without building TrainingArguments."""
from __future__ import annotations

import math
import os

from sqsd_fast.choices import check_device, check_finite_float, check_positive_int, name_value_pairs

# LoRA settings used when neither the caller nor --init-adapter gives them. All linear
# modules: the SQSD authors train their LoRA states and directions on every linear layer.
LORA_DEFAULTS = {"r": 8, "lora_alpha": 16.0, "lora_dropout": 0.05, "target_modules": "all-linear"}


# transformers' schedules (SchedulerType values) that need neither lr_scheduler_kwargs nor
# evaluation metrics (cosine_with_min_lr, warmup_stable_decay, reduce_lr_on_plateau, ...
# do), neither of which train-adapter has: the choices it offers; tests/test_training.py
# checks them against transformers'.
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup", "inverse_sqrt")


# The folder inside --out where the Trainer writes its checkpoints (training/outdir.py).
CHECKPOINTS = "checkpoints"

# What --monitor-threshold can do when a projection reaches it.
MONITOR_ACTIONS = ("warn", "stop")
# Direction names become CSV columns and log keys (``drift/<name>_proj``): no separators.

def positive(name, value, *, optional=False):
    return check_positive_int(name, value, optional=optional)


def number(low: float, high: float | None = None, *, low_open=False, optional=False):
    """A check for a finite number in [low, high) (or (low, high) when ``low_open``)."""
    def check(name, value):
        if value is None and optional:
            return None
        number = check_finite_float(name, value)
        if number < low or (low_open and number == low) or (high is not None and number >= high):
            lo = "(" if low_open else "["
            hi = f"{high})" if high is not None else "inf)"
            raise ValueError(f"{name} must be in {lo}{low}, {hi}, got {value!r}")
        return number
    return check


def check_target_modules(name, value):
    if value is None:
        return None
    names = [part.strip() for part in str(value).split(",")]
    if not all(names):
        raise ValueError(f"{name} must be all-linear or comma-separated module names such as "
                         f"q_proj,v_proj, got {value!r}")
    return ",".join(names)


def check_train_device(name, value):
    value = check_device(name, value)
    if value.startswith("cuda:") and value != "cuda:0":
        # transformers' Trainer always trains on the first visible GPU.
        raise ValueError(f"{name} {value}: training runs on the first visible GPU; pick it "
                         f"with CUDA_VISIBLE_DEVICES={value.split(':')[1]} and --device cuda")
    return value


def check_monitor_threshold(name, value):
    out = []
    for key, text in name_value_pairs(name, value, "NAME=VALUE"):
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"{name} {key}={text}: the value must be a finite number")
        out.append(f"{key}={number!r}")
    return out


def check_online_drop(name, value):
    """``top=F after=N`` (F in (0, 1), N >= 0 epochs; after defaults to 1)."""
    pairs = dict(name_value_pairs(name, value, "top=F after=N"))
    if not pairs:
        return []
    unknown = sorted(set(pairs) - {"top", "after"})
    if unknown or "top" not in pairs:
        raise ValueError(f"{name} takes top=FRACTION and optionally after=EPOCHS, got "
                         f"{' '.join(f'{k}={v}' for k, v in pairs.items())}")
    try:
        top, after = float(pairs["top"]), int(pairs.get("after", "1"))
    except ValueError:
        raise ValueError(f"{name}: top must be a fraction and after a whole number of epochs") from None
    if not 0 < top < 1 or after < 0:
        raise ValueError(f"{name}: top must be in (0, 1) and after >= 0, got top={top!r} after={after!r}")
    return [f"top={top!r}", f"after={after}"]


def check_seed(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def check_warmup(name, value):
    """transformers' warm-up: a fraction of the optimizer steps below 1, else whole steps."""
    number_ = check_finite_float(name, value)
    if number_ < 0 or (number_ >= 1 and number_ != int(number_)):
        raise ValueError(f"{name} must be a fraction of the optimizer steps in [0, 1) or a whole "
                         f"number of steps, got {value!r}")
    return number_


def check_one_process() -> None:
    """train-adapter trains in one process: several started by torchrun or accelerate
    launch would each take --out (its lock, its run record, its checkpoints)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        size = 1
    if size > 1 and os.environ.get("SQSD_FAST_DISTRIBUTED", "").strip() != "0":   # 0: run alone anyway
        raise ValueError(f"train-adapter runs in one process, not as one of {size} (WORLD_SIZE={size}: "
                         "torchrun or accelerate launch); start it directly, e.g. `sqsd-fast train-adapter "
                         "...`, or set SQSD_FAST_DISTRIBUTED=0 to train alone in this process (score, project and "
                         "baseline do run on several processes)")
