"""LoRA supervised fine-tuning: the adapters SQSD needs, from one function.

    from sqsd_fast.training import train_adapter, format_summary
    result = train_adapter(model="BASE", data="unsafe.jsonl", out="lora_unsafe")
    print(format_summary(result))

Serves every adapter of the SQSD workflow: the danger direction (unsafe data), the safety
direction (refusals), the initial state (benign data) and fine-tuning a selected subset
(``init_adapter`` continues an adapter; ``merge_to`` writes a merged model, e.g. a
safety-aligned base). peft builds the LoRA, ``transformers.Trainer`` trains it (progress
bar, checkpoints under ``out/checkpoints``, exact resume with ``resume=True``); the data is
read and tokenized as for scoring (``sqsd_fast/training/data.py``).

Order of work: options checked -> ``out``/``merge_to``/device/``model`` path checked ->
(``out`` locked) -> ``init_adapter`` and data read -> model resolved (a GGUF converted,
once) -> ``init_adapter`` checked against the model's shapes -> data tokenized -> run
recorded (a resume must match) -> model loaded -> monitored directions resolved against
it -> train -> adapter saved into ``out`` with its marker file last -> the drift monitor's
files moved into ``out`` -> checkpoints removed. Every user error is a one-line
``ValueError`` raised before the model weights are loaded (a direction covering other
LoRA modules than the trained ones: once the model is built, before training).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from sqsd_fast.data.batching import pad_id
from sqsd_fast.io.checkpoint import path_fingerprint
from sqsd_fast.io.lock import output_lock
from sqsd_fast.models import resolve_model
from sqsd_fast.models.adapters import check_against_model, load_base_model, read_adapter
from sqsd_fast.models.quantized import check_bitsandbytes
from sqsd_fast.models.quiet import quiet_libraries
from sqsd_fast.options.checks import check_model_path
from sqsd_fast.options.train_adapter import TrainAdapterOptions
from sqsd_fast.training import outdir
from sqsd_fast.training.data import ResponseOnlyCollator, prepare_train_data, read_train_records
from sqsd_fast.training.drift import DRIFT_CSV, DRIFT_PLOT, DRIFT_START, DriftMonitor
from sqsd_fast.training.online import OnlineSQSD, score_at_start, stationarity
from sqsd_fast.training.result import TrainResult, epoch_losses, summary_dict
from sqsd_fast.training.sample_fields import SAMPLE_INDEX, SAMPLE_WEIGHT, FieldsCollator, SampleFields
from sqsd_fast.training.weights import SampleWeightedLoss


def train_adapter(options: TrainAdapterOptions | None = None, /, *,
                  callbacks: Sequence[Any] = (), **kwargs) -> TrainResult:
    """Train a LoRA adapter on ``data`` and save it to ``out`` (see TrainAdapterOptions).

    ``callbacks``: extra ``transformers.TrainerCallback``s (e.g. to stop early).
    """
    if options is None:
        options = TrainAdapterOptions.from_keywords(**kwargs)
    elif kwargs:
        raise TypeError("give train_adapter either a TrainAdapterOptions or keywords, not both")
    # --- checks that read nothing big, in the order a user would fix them
    outdir.check_out(options.out, resume=options.resume, overwrite=options.overwrite)
    outdir.check_merge_to(options.merge_to)
    _check_device(options.train_device, options.dtype)
    if options.quantization():
        check_bitsandbytes(f"--load-in-{options.quantization()}")
    check_model_path(options.model)
    with output_lock(options.out):     # one run per adapter directory
        return _train_locked(options, callbacks)


def _train_locked(options: TrainAdapterOptions, callbacks) -> TrainResult:
    say = _printer(options)
    # Again under the lock: another run may have finished or started meanwhile.
    state = outdir.check_out(options.out, resume=options.resume, overwrite=options.overwrite)
    init_config = _read_init_config(options)
    lora = options.lora_settings(init_config)
    raw, records = read_train_records(options)
    model_source = resolve_model_source(options.model, progress=options.progress)
    _check_fits_model(options, lora, model_source)
    data = prepare_train_data(options, raw, records, model_source)
    if data.n_skipped:
        say(f"{data.n_skipped} of {data.n_records} samples have no response token after "
            f"truncation to {options.max_length} tokens; training on the other "
            f"{len(data.samples)}")
    if data.weights is not None:
        zero = sum(1 for s in data.samples if data.weights[s.index] == 0)
        say(f"per-sample loss weights from {options.weight_column}: {zero} of {len(data.samples)} "
            f"samples weigh 0 (masked)")

    # --- the run is recorded before any weight is touched
    outdir.start_out(state, overwrite=options.overwrite)
    if options.overwrite:        # an earlier run's drift files would pass for this run's
        for name in DRIFT_FILES:
            (state.path / name).unlink(missing_ok=True)
    if options.online_drop and state.checkpoint is not None:
        raise ValueError("--online-drop cannot --resume yet: the Trainer places a resumed run by full-length "
                         "epochs, and the epochs the drop shortened would be misplaced; start over with "
                         "--overwrite")
    if options.resume and state.checkpoint is None:
        say(f"--resume: no checkpoint in {state.path / outdir.CHECKPOINTS}; starting from "
            f"the beginning")
    outdir.check_started(state, fingerprint(options, lora, data))

    started = time.perf_counter()
    peft_model = build_peft_model(options, model_source, lora)
    monitor = build_monitor(options, state, peft_model)
    online = build_online(options, state, peft_model, data)
    # The monitor first: a later callback that stops or interrupts a step sees it measured.
    trainer = build_trainer(options, peft_model, data, state,
                            [c for c in (monitor, online) if c is not None] + list(callbacks))
    if state.checkpoint is not None:
        say(f"resuming from {state.checkpoint}")
    with quiet_libraries() if options.quiet else contextlib.nullcontext():
        trainer.train(resume_from_checkpoint=state.checkpoint)

    history = [e for e in trainer.state.log_history if "loss" in e]
    losses = epoch_losses(history)
    result = TrainResult(
        options=options, out=str(state.path), lora=lora, epoch_losses=losses,
        final_loss=losses[-1] if losses else None, n_samples=len(data.samples),
        n_skipped=data.n_skipped, n_truncated=data.n_truncated,
        n_trainable_params=sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        global_step=trainer.state.global_step, runtime_s=time.perf_counter() - started,
        resumed_from=state.checkpoint, merged_to=options.merge_to,
        loss_log=[{k: e[k] for k in ("step", "epoch", "loss")} for e in history],
        drift=drift_summary(options, state, monitor), online=online_summary(options, state, online))
    merge = None
    if options.merge_to is not None:
        def merge():
            say(f"writing the merged model to {options.merge_to}")
            with quiet_libraries() if options.quiet else contextlib.nullcontext():
                outdir.write_merged(peft_model, data.tokenizer, options.merge_to)
    peft_model.eval()
    # The drift files wait in OUT/checkpoints until the adapter is finished: in OUT itself
    # they would make an unfinished run's directory look foreign to --resume (outdir.py).
    outdir.finish_out(state, peft_model, summary_dict(result),
                      keep_checkpoints=options.keep_checkpoints or monitor is not None or online is not None,
                      before_marker=merge)
    if monitor is not None or online is not None:
        for name in (*DRIFT_FILES, ONLINE_DIR):
            staged = state.path / outdir.CHECKPOINTS / name
            if staged.exists():
                shutil.rmtree(state.path / name, ignore_errors=True)
                os.replace(staged, state.path / name)
        if not options.keep_checkpoints:
            shutil.rmtree(state.path / outdir.CHECKPOINTS, ignore_errors=True)
    return result


# ------------------------------------------------------------------ drift monitor

DRIFT_FILES = ("drift.csv", "drift.png")     # drift.DRIFT_CSV, DRIFT_PLOT (not imported:
                                             # drift.py pulls in transformers)


def build_monitor(options: TrainAdapterOptions, state, peft_model):
    """The DriftMonitor of --monitor-direction (None without it), resolved against the
    model so that a direction for other modules is refused before training.

    Its CSV, plot and start factors live in OUT/checkpoints while training. A resumed run
    reads the start factors back; where they are missing (monitoring added at the resume)
    they are saved now, from the model as just built: the seeded new LoRA or the init
    adapter, i.e. the run's start, before the Trainer loads the checkpoint.
    """
    if not options.monitor_direction:
        return None
    work = state.path / outdir.CHECKPOINTS
    monitor = DriftMonitor(options.monitor_directions(), every_n_steps=options.monitor_steps,
                           csv_path=work / DRIFT_CSV, plot_path=work / DRIFT_PLOT,
                           threshold=options.monitor_thresholds() or None,
                           on_threshold=options.monitor_action, start_path=work / DRIFT_START)
    monitor.bind(peft_model)
    if state.checkpoint is not None and not (work / DRIFT_START).is_file():
        monitor.save_start(peft_model)
    return monitor


ONLINE_DIR = "online"


def build_online(options: TrainAdapterOptions, state, peft_model, data):
    """The OnlineSQSD of --online-score (None without it). Its files live in
    OUT/checkpoints/online while training, as the drift files do. Before the first step
    (not on a resume, which reads them back) every sample is scored at the start weights,
    in one extra pass: the reference of the stationarity check."""
    if not options.online_score:
        return None
    work = state.path / outdir.CHECKPOINTS / ONLINE_DIR
    drop = options.online_drop_settings()
    online = OnlineSQSD(options.online_directions(), out_dir=work, drop_top=drop and drop[0],
                        drop_after=drop[1] if drop else 1)
    if not (work / "start_scores.csv").is_file():
        started = time.perf_counter()
        score_at_start(peft_model, data.samples, options.online_directions(), data.tokenizer,
                       work / "start_scores.csv", batch_size=options.per_device_train_batch_size,
                       max_length=options.max_length)
        online.start_pass_s = time.perf_counter() - started
    return online


def online_summary(options: TrainAdapterOptions, state, online) -> dict | None:
    if online is None:
        return None
    work = state.path / outdir.CHECKPOINTS / ONLINE_DIR
    return {"directions": options.online_directions(), "rows_this_run": len(online.rows),
            "start_pass_s": round(getattr(online, "start_pass_s", 0.0), 1),
            "scores": str(state.path / ONLINE_DIR / "online_scores"),
            "summary": str(state.path / ONLINE_DIR / "online_summary.csv"),
            "dropped": {str(e): v for e, v in online.dropped.items()},
            "spearman_with_start": stationarity(work)}


def drift_summary(options: TrainAdapterOptions, state, monitor) -> dict | None:
    """What train_summary.json records of the monitor: the settings, the last
    measurement, the thresholds reached and where the files are."""
    if monitor is None:
        return None
    return {"directions": options.monitor_directions(), "every_n_steps": monitor.every_n_steps,
            "threshold": monitor.threshold, "on_threshold": monitor.on_threshold,
            "final": monitor.final, "triggered": monitor.triggered,
            "stopped_at": monitor.stopped_at, "csv": str(state.path / DRIFT_FILES[0]),
            "plot": str(state.path / DRIFT_FILES[1]) if monitor.history else None}


# ------------------------------------------------------------------------ checks


def resolve_model_source(model: str, *, progress: bool = True) -> str:
    """The loadable form of ``--model``: a directory or hub id as given, a ``.gguf`` file
    de-quantized once into a cached model directory (``sqsd_fast.models``)."""
    return str(resolve_model(model, progress=progress))


def _read_init_config(options: TrainAdapterOptions) -> dict | None:
    """The init adapter's config, after checking it is a plain LoRA adapter directory."""
    if options.init_adapter is None:
        return None
    read_adapter(options.init_adapter)
    with open(Path(options.init_adapter) / "adapter_config.json", encoding="utf-8") as f:
        return json.load(f)


def _check_fits_model(options: TrainAdapterOptions, lora: dict, model_source: str) -> None:
    """The init adapter, the monitored directions and the --target-modules names must fit
    the base model: checked against an empty skeleton of the model, so no weights are
    loaded for it."""
    targets = lora["target_modules"]
    if options.init_adapter is None and targets == "all-linear" \
            and not options.monitor_direction and not options.online_score:
        return
    skeleton = _model_skeleton(model_source)
    if skeleton is None:
        return
    for option, directions in (("--monitor-direction", options.monitor_directions()),
                               ("--online-score", options.online_directions())):
        for name, path in directions.items():
            try:
                check_against_model(path, read_adapter(path), skeleton)
            except ValueError as exc:
                raise ValueError(f"{option} {name}: {exc}") from None
    if options.init_adapter is not None:
        check_against_model(options.init_adapter, read_adapter(options.init_adapter), skeleton)
        return
    if targets == "all-linear":
        return
    names = [name for name, _ in skeleton.named_modules()]
    # peft's rule: a target matches a module whose name is it or ends in "." + it.
    missing = [t for t in targets.split(",")
               if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(f"--target-modules {targets}: the model has no module named "
                         f"{missing[0]!r}; name linear layers such as q_proj,v_proj, or "
                         f"use all-linear")


def _model_skeleton(model_source: str):
    """The model's modules on the meta device, or None where its config cannot be built
    that way (the adapter is then checked against the loaded model)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    try:
        config = AutoConfig.from_pretrained(model_source)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception:  # an unusual architecture: checked after loading instead
        return None


def _check_device(device: str, dtype: str) -> None:
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch {torch.__version__} sees no CUDA GPU; "
                         f"use --device cpu")
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--dtype bfloat16: the GPU {torch.cuda.get_device_name()} does not "
                         f"support it; use --dtype float16 or float32")


def fingerprint(options: TrainAdapterOptions, lora: dict, data) -> dict:
    """What decides the trained adapter: every option but NOT_FINGERPRINTED, paths and the
    data by content, and the LoRA settings actually used."""
    extra = {}
    if options.online_drop:
        # Which samples are left out follows the online scores: their directions count.
        extra["online_drop_scores"] = {n: path_fingerprint(d) for n, d in options.online_directions().items()}
    if options.monitor_action == "stop":
        # The monitor's thresholds decide where training ends; only then do they change
        # the adapter (see NOT_FINGERPRINTED). Without it the key is absent, as before.
        thresholds = options.monitor_thresholds()
        directions = options.monitor_directions()
        extra["monitor_stop"] = {
            "threshold": thresholds, "every_n_steps": options.monitor_steps,
            "directions": {n: path_fingerprint(directions[n]) for n in sorted(thresholds)}}
    return options.fingerprint(whole_file="data", whole_file_is_local=data.raw.path is not None,
                               n_samples=len(data.samples), lora=lora, **extra)


# ------------------------------------------------------------------ model, trainer


def build_peft_model(options: TrainAdapterOptions, model_source: str, lora: dict):
    """The base model with a trainable LoRA: a new one (seeded) or ``init_adapter``'s."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import set_seed

    set_seed(options.seed)       # the LoRA A init draws from the global RNG
    with quiet_libraries():
        base = load_base_model(model_source, dtype=options.dtype, device=options.train_device,
                               quantization=options.quantization())
        if options.quantization():
            # QLoRA's preparation: the layers left in float (norms, embeddings, head) in
            # float32 for a stable backward; checkpointing is the Trainer's (build_trainer).
            from peft import prepare_model_for_kbit_training
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        if options.init_adapter is not None:
            check_against_model(options.init_adapter, read_adapter(options.init_adapter), base)
            config = LoraConfig.from_pretrained(options.init_adapter)
            config.lora_dropout, config.inference_mode = lora["lora_dropout"], False
            return PeftModel.from_pretrained(base, options.init_adapter, is_trainable=True,
                                             config=config)
        targets = lora["target_modules"]
        config = LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"],
                            lora_dropout=lora["lora_dropout"], bias="none",
                            task_type="CAUSAL_LM", target_modules=targets
                            if targets == "all-linear" else targets.split(","))
        try:
            return get_peft_model(base, config)
        except ValueError as exc:   # e.g. a module name the model does not have
            raise ValueError(f"--target-modules {targets}: "
                             f"{str(exc).splitlines()[0]}") from None


def build_trainer(options: TrainAdapterOptions, peft_model, data, state, callbacks=()):
    from transformers import PrinterCallback, TrainerCallback

    class LogEveryEpoch(TrainerCallback):
        """Log at every epoch end even with --logging-steps, so every epoch's mean loss
        can be read back from the log history (see epoch_losses)."""

        def on_epoch_end(self, args, state, control, **kwargs):
            control.should_log = True
            return control

    # The options are the Trainer's arguments (TrainAdapterOptions is a TrainingArguments).
    trainer = trainer_class(data)(model=peft_model, args=options, train_dataset=data.samples,
                                  data_collator=collator(data), callbacks=[LogEveryEpoch(), *callbacks])
    if options.quiet:
        trainer.remove_callback(PrinterCallback)
    return trainer


def trainer_class(data):
    """A Trainer whose batches carry each sample's index (for callbacks such as the online
    scorer) and, with --weight-column, the loss sum w_s loss_s / sum w_s."""
    from transformers import Trainer

    mixin = SampleWeightedLoss if data.weights is not None else SampleFields
    return type(f"{mixin.__name__}Trainer", (mixin, Trainer), {})


def collator(data):
    """Right-padded batches by the scoring engine's ``collate``, with the sample fields."""
    inner = ResponseOnlyCollator(pad_id(data.tokenizer))
    if data.weights is None:
        return FieldsCollator(inner, (SAMPLE_INDEX,))
    return FieldsCollator(inner, (SAMPLE_INDEX, SAMPLE_WEIGHT), {SAMPLE_WEIGHT: data.weights})


def _printer(options: TrainAdapterOptions):
    def say(message: str) -> None:
        if not options.quiet:
            print(message, file=sys.stderr)
    return say
