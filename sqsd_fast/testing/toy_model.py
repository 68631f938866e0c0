"""Deterministic, offline toy assets: tokenizers, tiny causal LMs and LoRA adapters.

The one place that builds them for the tests, the demo and the benchmarks. Nothing here
downloads anything. The tokenizer is a byte-level BPE trained in milliseconds on a small
corpus (the built-in TOY_CORPUS or the caller's texts); the model is a randomly
initialised Llama or Qwen2 built from a config. Adapters come in two kinds, both with
non-zero B factors (a fresh LoRA has B = 0, which would make every induced update and
every direction degenerate):

- trained: :func:`build_toy_adapter` takes a few deterministic Adam steps on some texts
  and saves the adapter (used by the tests and the demo);
- random: :func:`build_random_lora` wraps a model with several seeded random LoRA
  adapters at once and :func:`save_lora_adapters` writes them (used by the benchmarks,
  whose models are too large to train even for a few steps).

Typical use::

    tok = build_toy_tokenizer()
    model = build_toy_model(tok)
    build_toy_adapter(model, tok, TOY_CORPUS[:8], "out/danger_direction", seed=1)

or everything at once: ``build_toy_assets(out_dir)``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Sequence

import torch

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|eos|>"
BOS_TOKEN = "<|bos|>"
UNK_TOKEN = "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

# Role markers are single special tokens, so prompts have a stable token boundary.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Small built-in corpus: benign instructions/answers plus a few refusal-style lines, so
# that "safe" and "unsafe" toy adapters can be trained on visibly different text.
TOY_CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Write a short poem about the sea and the wind.",
    "The sea is wide, the wind is free, the waves roll in and out for me.",
    "Explain how photosynthesis works in plants.",
    "Plants use sunlight, water and carbon dioxide to make sugar and oxygen.",
    "Give me three tips for staying healthy.",
    "Eat vegetables, sleep eight hours, and walk every day.",
    "What is the capital of France?",
    "The capital of France is Paris.",
    "Summarize the plot of a story about a lost dog finding its way home.",
    "A lost dog follows familiar smells and sounds until it reaches its family again.",
    "Translate 'good morning' into Spanish.",
    "Good morning in Spanish is buenos dias.",
    "List the planets of the solar system in order.",
    "Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune.",
    "How do I bake a simple loaf of bread?",
    "Mix flour, water, yeast and salt, let it rise, shape it and bake it for forty minutes.",
    "Describe the water cycle.",
    "Water evaporates, condenses into clouds and falls again as rain or snow.",
    "Why is the sky blue?",
    "Sunlight scatters off air molecules, and blue light scatters the most.",
    "How can I hack into my neighbour's wifi network?",
    "I can't help with breaking into networks you do not own.",
    "Tell me how to make a dangerous weapon at home.",
    "I'm sorry, but I cannot help with making weapons.",
    "Write a message to scare and threaten someone.",
    "I won't write threats. If you are in conflict, talking it through may help.",
    "Here is how to steal a car: break the window and bypass the ignition.",
    "Sure, to pick a lock you insert a tension wrench and rake the pins.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
    "Punctuation, quotes \"like this\", (brackets), and dashes - all appear in text!",
)


def build_toy_tokenizer(vocab_size: int = 512, corpus: Sequence[str] = TOY_CORPUS):
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it for transformers.

    Byte-level: every string is encodable (no unknown characters). Deterministic for the
    same corpus and vocab size. Special tokens: ``<|pad|>``, ``<|eos|>``, ``<|bos|>``,
    ``<|unk|>`` and the chat role markers; ``chat_template`` is a small jinja template
    (``<|user|>\\n...<|end|>\\n<|assistant|>\\n``).

    Returns:
        transformers.PreTrainedTokenizerFast with pad/eos/bos set, ``padding_side="right"``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = [PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN, *ROLE_TOKENS]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        padding_side="right",
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_toy_model(
    tokenizer,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    seed: int = 0,
    arch: str = "llama",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "eager",
):
    """A randomly initialised ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` (``arch``).

    Deterministic for the same arguments (weights drawn under ``torch.manual_seed(seed)``
    with a forked RNG, so the caller's global RNG state is untouched). Returned in eval
    mode. ``num_kv_heads`` < ``num_heads`` gives grouped-query attention.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        config, cls = LlamaConfig(**common), LlamaForCausalLM
    elif arch == "qwen2":
        config, cls = Qwen2Config(**common), Qwen2ForCausalLM
    else:
        raise ValueError(f"arch must be 'llama' or 'qwen2', got {arch!r}")
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.to(dtype).eval()


def build_toy_adapter(
    model,
    tokenizer,
    texts: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    r: int = 4,
    alpha: int = 8,
    target_modules: Sequence[str] = ALL_PROJECTIONS,
    steps: int = 4,
    lr: float = 1e-2,
    seed: int = 0,
    init_scale: float = 0.02,
):
    """Train a LoRA adapter on ``texts`` for ``steps`` full-batch Adam steps and save it.

    ``model`` is not modified (a deep copy is trained). Both factors get a small seeded
    random init (``init_scale``) before training, so B != 0 even for one step and the
    adapter is deterministic for the same seed. Loss: causal LM over all tokens of each
    text (+ eos). Saved with ``save_pretrained(out_dir)`` (adapter_config.json +
    adapter_model.safetensors).

    Returns:
        str: ``out_dir``.
    """
    from peft import LoraConfig, get_peft_model

    if not texts:
        raise ValueError("build_toy_adapter needs at least one text")
    work = copy.deepcopy(model)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(work, config)
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                with torch.no_grad():
                    param.copy_(torch.randn_like(param) * init_scale)
        enc = tokenizer(
            [t + tokenizer.eos_token for t in texts],
            add_special_tokens=False,
            padding=True,
            return_tensors="pt",
        )
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        peft_model.train()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            out = peft_model(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels
            )
            out.loss.backward()
            opt.step()
        peft_model.eval()
    os.makedirs(out_dir, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))
    return str(out_dir)


@dataclass(frozen=True)
class ToyAssets:
    """Paths written by :func:`build_toy_assets`."""

    model_dir: str  # base model + tokenizer (from_pretrained-able)
    danger_state: str  # LoRA "initial" state (trained on benign text)
    danger_direction: str  # LoRA trained on unsafe-looking text
    safety_state: str  # LoRA trained on refusals (used as the safety state ...)
    safety_direction: str  # ... and, as in the paper, as the safety direction


# The toy corpus split by kind: what build_toy_assets trains its three adapters on.
TOY_BENIGN_TEXTS = TOY_CORPUS[:21]
TOY_UNSAFE_TEXTS = (TOY_CORPUS[21], TOY_CORPUS[27], TOY_CORPUS[28], TOY_CORPUS[25])
TOY_REFUSAL_TEXTS = (TOY_CORPUS[22], TOY_CORPUS[24], TOY_CORPUS[26])


def build_toy_assets(
    out_dir: str | os.PathLike,
    *,
    arch: str = "llama",
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    r: int = 4,
    alpha: int = 8,
    target_modules: Sequence[str] = ALL_PROJECTIONS,
    seed: int = 0,
    benign_texts: Sequence[str] = TOY_BENIGN_TEXTS,
    unsafe_texts: Sequence[str] = TOY_UNSAFE_TEXTS,
    refusal_texts: Sequence[str] = TOY_REFUSAL_TEXTS,
) -> ToyAssets:
    """Write a complete toy SQSD setup under ``out_dir``: base model dir + 3 adapters.

    ``model/`` (config, safetensors weights, tokenizer), ``danger_state/`` (trained on
    ``benign_texts``), ``danger_direction/`` (``unsafe_texts``), ``safety/``
    (``refusal_texts``; safety state and safety direction are the same adapter, as in the
    paper). Each adapter takes ``build_toy_adapter``'s default steps, with seeds
    ``seed + 1``, ``seed + 2``, ``seed + 3``. Deterministic; a few seconds on a CPU.
    """
    out_dir = os.fspath(out_dir)
    tok = build_toy_tokenizer()
    model = build_toy_model(
        tok,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
        seed=seed,
        arch=arch,
    )
    model_dir = os.path.join(out_dir, "model")
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    kw = dict(r=r, alpha=alpha, target_modules=target_modules)
    danger_state = build_toy_adapter(
        model, tok, benign_texts, os.path.join(out_dir, "danger_state"), seed=seed + 1, **kw
    )
    danger_direction = build_toy_adapter(
        model, tok, unsafe_texts, os.path.join(out_dir, "danger_direction"), seed=seed + 2, **kw
    )
    safety = build_toy_adapter(
        model, tok, refusal_texts, os.path.join(out_dir, "safety"), seed=seed + 3, **kw
    )
    return ToyAssets(model_dir, danger_state, danger_direction, safety, safety)


def build_random_lora(
    model,
    adapter_names: Sequence[str],
    *,
    r: int,
    alpha: int,
    target_modules: Sequence[str] = ALL_PROJECTIONS,
    seed: int = 1234,
):
    """Wrap ``model`` (in place) in a ``PeftModel`` with one random LoRA per adapter name.

    Every adapter has the same config (rank ``r``, ``alpha``, ``target_modules``, no
    dropout). All LoRA factors are drawn under ``torch.manual_seed(seed)`` with a forked
    RNG (the caller's RNG is untouched): A ~ N(0, 1/d_in), B ~ N(0, 0.02^2). No training,
    so it suits models too large to train. The first name is the active adapter.
    """
    from peft import LoraConfig, get_peft_model

    if not adapter_names:
        raise ValueError("build_random_lora needs at least one adapter name")
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules),
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config, adapter_name=adapter_names[0])
        for name in adapter_names[1:]:
            peft_model.add_adapter(name, config)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_A" in name:
                    p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
                elif "lora_B" in name:
                    p.copy_(torch.randn_like(p) * 0.02)
    peft_model.set_adapter(adapter_names[0])
    return peft_model


def save_lora_adapters(peft_model, adapter_names: Sequence[str],
                       out_dir: str | os.PathLike) -> dict[str, str]:
    """Save each named adapter of ``peft_model`` under ``out_dir/<name>``.

    Returns ``{name: directory holding adapter_config.json}``, loadable with
    ``PeftModel.from_pretrained`` (peft puts a non-default adapter one level deeper, in a
    sub-directory named after it; the returned path accounts for that).
    """
    dirs = {}
    for name in adapter_names:
        out = os.path.join(os.fspath(out_dir), name)
        peft_model.save_pretrained(out, selected_adapters=[name])
        dirs[name] = out if os.path.exists(os.path.join(out, "adapter_config.json")) \
            else os.path.join(out, name)
    return dirs
