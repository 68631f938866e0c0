"""Greedy, batched, left-padded generation of answers to prompts.

Each prompt becomes one user turn (after an optional system turn), rendered with the
tokenizer's chat template plus the generation prompt, or the plain template of
``sqsd_fast.data.tokenize`` when the tokenizer has none, and encoded without added special
tokens (the template carries them), exactly as training data are tokenized.

Batches are cut from the prompts sorted by length (longest first: little padding, and an
out-of-memory batch size fails on the first batch). Padding goes on the LEFT, so every
row's last prompt token sits at the same position and the new tokens line up; the
attention mask and the position ids generate derives from it make a padded row's greedy
answer the one the row gets alone, up to floating-point rounding of the differently
shaped batch (which can flip a near-tie, most likely in bfloat16). Checked token for
token in float32 on the CPU: the toy model (eager attention) in tests/test_evaluation.py,
and SmolLM2-135M-Instruct (sdpa) on 16 AdvBench prompts, batch 8 against batch 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from sqsd_fast.data.tokenize import render_prompt
from sqsd_fast.models.adapters import check_against_model, load_base_model, read_adapter
from sqsd_fast.models.quiet import quiet_libraries

# What loading a model, a tokenizer or an adapter raises for bad input (missing files,
# damaged JSON, unknown architectures, shape misfits). Deliberately not Exception: a
# KeyboardInterrupt or the CLI's SIGTERM exception must not become "could not load".
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, ImportError, TypeError,
               AttributeError)


@dataclass
class Answer:
    """New tokens of one prompt, cut before the first end-of-sequence token."""

    token_ids: list[int]
    truncated: bool          # max_new_tokens was reached before an end token


@dataclass
class Generator:
    model: Any               # a causal LM (or a PeftModel around one) in eval mode
    tokenizer: Any
    pad_token_id: int
    eos_token_ids: tuple[int, ...]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(self, batch: Sequence[Sequence[int]], max_new_tokens: int) -> list[Answer]:
        """Greedy answers to a batch of encoded prompts, in the batch's order."""
        from transformers import GenerationConfig
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
            mask[row, width - len(ids):] = 1
        # A fresh config: the model's own may ask for sampling (temperature, top_p).
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=self.pad_token_id,
                                  eos_token_id=list(self.eos_token_ids))
        with quiet_libraries():   # no "flags ignored" notes about the model's sampling config
            out = self.model.generate(input_ids=input_ids.to(self.device),
                                      attention_mask=mask.to(self.device),
                                      generation_config=config)
        answers = []
        for row in out[:, width:].tolist():
            end = next((j for j, t in enumerate(row) if t in self.eos_token_ids), None)
            answers.append(Answer(row if end is None else row[:end], truncated=end is None))
        return answers

    def decode(self, answer: Answer) -> str:
        return self.tokenizer.decode(answer.token_ids, skip_special_tokens=True)


def encode_prompts(tokenizer, prompts: Sequence[str], system_prompt: str | None = None
                   ) -> list[list[int]]:
    """Token ids of each prompt's rendered chat turn, ready to generate from."""
    texts = []
    for i, prompt in enumerate(prompts):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        try:
            texts.append(render_prompt(tokenizer, messages))
        except (*LOAD_ERRORS, _template_error()) as exc:  # e.g. no system role allowed
            hint = ("; this template may not accept a system turn, drop --system-prompt"
                    if system_prompt else "")
            raise ValueError(f"the tokenizer's chat template failed on prompt {i} "
                             f"({_first_line(exc)}){hint}") from None
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)
    return [list(ids) for ids in encoded.input_ids]


def length_sorted_batches(lengths: Sequence[int], batch_size: int,
                          skip: frozenset = frozenset()) -> list[list[int]]:
    """Positions (not in ``skip``) sorted longest first, ties by position, cut in batches."""
    order = sorted((i for i in range(len(lengths)) if i not in skip),
                   key=lambda i: (-lengths[i], i))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def iter_answers(generator: Generator, encoded: Sequence[Sequence[int]], *, batch_size: int,
                 max_new_tokens: int, skip: frozenset = frozenset()
                 ) -> Iterator[list[tuple[int, Answer]]]:
    """One list of (position, answer) per batch, batches longest first."""
    for positions in length_sorted_batches([len(e) for e in encoded], batch_size, skip):
        answers = generator.generate([encoded[i] for i in positions], max_new_tokens)
        yield list(zip(positions, answers))


# --------------------------------------------------------------------------- loading


def special_ids(tokenizer, model_config=None, generation_config=None, *, where: str
                ) -> tuple[int, tuple[int, ...]]:
    """(pad id, end-of-sequence ids): the tokenizer's eos plus the generation config's
    (chat models often end a turn with a token other than the tokenizer's eos)."""
    eos: list[int] = []
    for source in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id,
                   getattr(model_config, "eos_token_id", None)):
        for t in (source if isinstance(source, (list, tuple)) else [source]):
            if t is not None and int(t) not in eos:
                eos.append(int(t))
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos[0] if eos else None   # padding is masked out, any id will do
    if pad is None:
        raise ValueError(f"{where}: the tokenizer has neither a pad nor an eos token, so "
                         f"batches cannot be padded; set tokenizer.pad_token")
    return int(pad), tuple(eos)


def check_adapter_fits(adapter: str, model_source: str, option: str = "--adapter") -> None:
    """Refuse an adapter made for another base model before any weight is loaded: its LoRA
    modules and shapes are checked against the model's layers built on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    weights = ("adapter_model.safetensors", "adapter_model.bin")
    if not any(os.path.isfile(os.path.join(adapter, w)) for w in weights):
        raise ValueError(f"{option} {adapter}: no adapter weights ({' or '.join(weights)})")
    try:
        factors = read_adapter(adapter)
    except ValueError:
        return  # a LoRA variant scoring cannot read (DoRA, ...); peft checks it when loading
    try:
        config = AutoConfig.from_pretrained(model_source)
        with torch.device("meta"):   # layers and shapes only, no memory, no weights read
            skeleton = AutoModelForCausalLM.from_config(config)
    except LOAD_ERRORS as exc:
        raise ValueError(f"--model {model_source}: could not read its configuration "
                         f"({_first_line(exc)})") from None
    try:
        check_against_model(adapter, factors, skeleton)
    except ValueError as exc:
        raise ValueError(f"{option} {adapter} does not fit --model {model_source}: {exc}") \
            from None


def load_generator(model_source: str, tokenizer, *, adapter: str | None = None,
                   dtype: str = "float32", device: str = "cpu") -> Generator:
    """The model (with the adapter, unmerged, when given) in eval mode, and ``tokenizer``."""
    with quiet_libraries():
        try:
            model = load_base_model(model_source, dtype=dtype, device=device)
        except LOAD_ERRORS as exc:
            raise ValueError(f"--model {model_source}: could not load a causal LM "
                             f"({_first_line(exc)})") from None
        if adapter is not None:
            from peft import PeftModel
            try:
                model = PeftModel.from_pretrained(model, os.fspath(adapter),
                                                  is_trainable=False).eval()
            except LOAD_ERRORS as exc:
                raise ValueError(f"--adapter {adapter}: could not be applied to --model "
                                 f"{model_source} ({_first_line(exc)})") from None
    pad, eos = special_ids(tokenizer, model.config, getattr(model, "generation_config", None),
                           where=f"--model {model_source}")
    return Generator(model, tokenizer, pad, eos)


def _template_error() -> type:
    """jinja2's error type (chat templates raise it, e.g. for a role they refuse)."""
    from jinja2.exceptions import TemplateError
    return TemplateError


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
