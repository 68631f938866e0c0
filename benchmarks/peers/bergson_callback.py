"""What bergson's train-time gradient store costs a LoRA fine-tune: the peer side of our
online scoring's overhead measurement.

Run with the python of a venv that has bergson (never this repo's venv; nothing from
sqsd_fast is imported):

    python bergson_callback.py --model MODEL_DIR --data DATA.jsonl --work WORKDIR \
        --mode plain|bergson [--epochs 3]

The same HF Trainer fine-tune as our validation recipe (SmolLM2, fp32, CPU, peft LoRA r 8,
alpha 16, dropout 0.05, all linear modules, lr 5e-4, batch 8, cosine, warm-up 0.03, seed 42,
max length 256, loss on the response + eos only), timed around trainer.train():

- plain: no callback.
- bergson: bergson.huggingface.GradientCollectorCallback attached as bergson's docs show it
  (callbacks=[callback], then prepare_for_gradient_collection(trainer), track_order=True),
  every other option at its default: each training step's per-sample gradients of the LoRA
  modules (lora_A / lora_B, found by bergson's detect_peft_modules) are randomly projected
  to 16 x 16 per module, normalized by Adam's second moment and scaled by the step's lr
  (use_optimizer_state, scale_by_lr), and written as float16 rows to WORKDIR/bergson/
  train/epoch_<e>/gradients.bin, one store per epoch (accumulate_grads=False), row i =
  dataset row i. WORKDIR/bergson is emptied first so that its size is this run's.
  The hooks see the Trainer's own backward, so a row is that sample's share of its batch's
  token-mean loss gradient; the first step's rows are unnormalized (no Adam state yet).

The last line of stdout is one JSON object: mode, train_s, peak_rss_mb, steps, samples,
bergson (version), projection_dim, stored_bytes, notes. The line before it (bergson mode)
describes the store: files, bytes, rows per epoch, rows actually written, row width.
"""
import argparse
import json
import os
import resource
import shutil
import time
from importlib.metadata import version
from pathlib import Path

# Everything is local: never let transformers or datasets reach for a hub.
for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoTokenizer, Trainer,  # noqa: E402
                          TrainingArguments, set_seed)

MAX_LENGTH = 256


def encode(tok, row: dict) -> dict:
    """Our tokenization: chat-template prompt of one user turn, then response + eos;
    labels -100 on the prompt; cut at MAX_LENGTH."""
    context = row.get("context") or ""
    user = row["instruction"] + ("\n" + context if context.strip() else "")
    prompt = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                     add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False).input_ids
    ids = tok(prompt + row["response"] + tok.eos_token, add_special_tokens=False).input_ids[:MAX_LENGTH]
    return {"input_ids": ids, "labels": [-100] * min(len(p_ids), len(ids)) + ids[len(p_ids):]}


def collator(pad_id: int):
    """Right padding to the batch's longest row. Reads only input_ids and labels, so the
    _idx column bergson adds passes by (bergson's wrapper adds it to the batch itself)."""
    def collate(features: list[dict]) -> dict:
        n = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            pad = n - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [pad_id] * pad)
            labels.append(list(f["labels"]) + [-100] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(mask)}
    return collate


def describe_store(root: Path) -> dict:
    """Files and bytes under root, and per epoch store: rows, rows written (not all zero:
    the file is created sparse, so an unwritten row reads as zeros), row width."""
    files = [p for p in root.rglob("*") if p.is_file()]
    epochs = {}
    for info_path in sorted(root.rglob("info.json")):
        info = json.loads(info_path.read_text())
        width = sum(info["grad_sizes"].values())
        grads = np.memmap(info_path.parent / "gradients.bin", dtype=info["base_dtype"], mode="r",
                          shape=(info["num_grads"], width))
        epochs[str(info_path.parent.relative_to(root))] = {
            "rows": info["num_grads"], "rows_written": int(np.any(grads != 0, axis=1).sum()),
            "width": width, "modules": len(info["grad_sizes"]), "dtype": info["base_dtype"]}
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files), "stores": epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--mode", required=True, choices=["plain", "bergson"])
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.work)
    store = work / "bergson"
    shutil.rmtree(store, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    tok = AutoTokenizer.from_pretrained(args.model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with open(args.data) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # A datasets.Dataset, not a list: prepare_for_gradient_collection adds _idx with .map.
    ds = Dataset.from_list([encode(tok, r) for r in rows])

    set_seed(42)  # before the LoRA weights are drawn, as the Trainer's own seed comes later
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    targs = TrainingArguments(
        output_dir=str(work / "trainer"), use_cpu=True, learning_rate=5e-4,
        per_device_train_batch_size=8, gradient_accumulation_steps=1, num_train_epochs=args.epochs,
        # transformers 5 has no warmup_ratio: warmup_steps below 1 is the fraction.
        lr_scheduler_type="cosine", warmup_steps=0.03, seed=42, save_strategy="no",
        logging_strategy="epoch", eval_strategy="no", report_to="none", disable_tqdm=True)

    callbacks, cb = [], None
    if args.mode == "bergson":
        from bergson.huggingface import GradientCollectorCallback, prepare_for_gradient_collection
        # A Path: the callback joins it with "/" (the docs' str example would fail).
        cb = GradientCollectorCallback(path=store, track_order=True)
        callbacks.append(cb)
    trainer = Trainer(model=model, args=targs, train_dataset=ds, data_collator=collator(pad_id),
                      callbacks=callbacks)
    if args.mode == "bergson":
        trainer = prepare_for_gradient_collection(trainer)

    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    stored = None
    if args.mode == "bergson":
        stored = describe_store(store)
        print("store: " + json.dumps(stored))
    notes = ("HF Trainer + peft LoRA (r 8, all-linear), fp32, CPU; " +
             ("no callback" if args.mode == "plain" else
              "GradientCollectorCallback(track_order=True), defaults: per-module random "
              f"projection {cb.projection_dim}x{cb.projection_dim} of lora_A/lora_B grads, "
              "Adam-normalized and lr-scaled, fp16, one store per epoch"))
    print(json.dumps({
        "mode": args.mode, "train_s": round(train_s, 2), "peak_rss_mb": round(peak_rss_mb, 1),
        "steps": trainer.state.global_step, "samples": len(ds), "bergson": version("bergson"),
        "projection_dim": cb.projection_dim if cb else None,
        "stored_bytes": stored["bytes"] if stored else None, "notes": notes}))


if __name__ == "__main__":
    main()
