"""Tokenization exactly as docs/METHOD.md §2.

For a record with a prompt (the chat turns before the response) and a response:

    prompt = tokenizer.apply_chat_template(prompt_messages, tokenize=False,
                                           add_generation_prompt=True)
    p_ids  = tokenizer(prompt, add_special_tokens=False).input_ids
    ids    = tokenizer(prompt + response + tokenizer.eos_token,
                       add_special_tokens=False).input_ids[:max_length]
    labels = [-100] * min(len(p_ids), len(ids)) + ids[len(p_ids):]

An instruction record's prompt is the single user turn
`instruction` (+ "\\n" + context when the context is not blank). Pre-tokenized records
keep their `input_ids` and `labels` as they are (no truncation).

Tokenizers without a chat template use PLAIN_TEMPLATE instead of apply_chat_template:
each prompt turn becomes "### {Header}:\\n{content}\\n\\n" (user -> Instruction,
system -> System, assistant -> Response, other roles capitalized), followed by
"### Response:\\n". A single user turn therefore gives
"### Instruction:\\n{user}\\n\\n### Response:\\n".
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from sqsd_fast.choices import check_positive_int
from sqsd_fast.data.records import Record

IGNORE_INDEX = -100
DEFAULT_MAX_LENGTH = 1024
PLAIN_TEMPLATE = "### Instruction:\n{user}\n\n### Response:\n"
_PLAIN_HEADERS = {"user": "Instruction", "system": "System", "assistant": "Response"}
# Texts per tokenizer call: batching calls is much faster with fast tokenizers and gives
# the same ids as one call per text.
_ENCODE_CHUNK = 512


class TokenIds(array):
    """Token ids (or labels) as 32-bit integers: 4 bytes a token where a list of Python ints
    takes about 36, so that 100k samples of a few hundred tokens stay within a few hundred
    MB. A sequence of ints like a list (len, indexing, slicing, iteration), and equal to a
    list or tuple of the same ints."""

    __slots__ = ()

    def __new__(cls, values: Iterable[int] = ()):
        return super().__new__(cls, "i", values)

    def __getitem__(self, key):
        item = array.__getitem__(self, key)
        return TokenIds(item) if isinstance(key, slice) else item

    def __eq__(self, other):
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return array.__eq__(self, other)

    def __ne__(self, other):
        return not self == other

    __hash__ = None   # mutable, as a list

    def __repr__(self) -> str:
        return f"TokenIds({self.tolist()})"


@dataclass(frozen=True)
class TokenizedSample:
    index: int              # position of the record in the input (0-based)
    input_ids: TokenIds     # (a list or tuple of ints works too where samples are built by hand)
    labels: TokenIds        # -100 on prompt positions (docs/METHOD.md §2)
    truncated: bool         # max_length cut the sample
    n_tokens: int           # len(input_ids)
    n_response_tokens: int  # labels that are not -100 and have a predecessor


def plain_prompt(messages: Sequence[dict]) -> str:
    """The prompt for tokenizers without a chat template (see the module docstring)."""
    parts = []
    for m in messages:
        header = _PLAIN_HEADERS.get(m["role"], str(m["role"]).capitalize())
        parts.append(f"### {header}:\n{m['content']}\n\n")
    parts.append("### Response:\n")
    return "".join(parts)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, messages: Sequence[dict]) -> str:
    """The prompt text: the tokenizer's chat template with the generation prompt added,
    or the plain template when the tokenizer has none."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=True)
    return plain_prompt(messages)


def count_response_tokens(labels: Sequence[int]) -> int:
    """Loss positions under the causal shift: labels[1:] that are not -100."""
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)


def tokenize_records(records: Iterable[Record], tokenizer: Any, *,
                     max_length: int = DEFAULT_MAX_LENGTH) -> list[TokenizedSample]:
    """Tokenize records (docs/METHOD.md §2), keeping their order and indices."""
    check_positive_int("max_length", max_length)
    records = list(records)
    text_positions = [i for i, r in enumerate(records) if r.kind != "pretokenized"]
    text_records = [records[i] for i in text_positions]
    encoded: dict[int, TokenizedSample] = {}  # position in `records` -> sample
    if text_records:
        eos = getattr(tokenizer, "eos_token", None)
        if not eos:
            raise ValueError("the tokenizer has no eos_token; docs/METHOD.md §2 appends it to "
                             "every response, so set tokenizer.eos_token")
    # Chunk by chunk: the tokenizer's lists of Python ints live for one chunk only, the
    # samples keep 32-bit arrays (a 100k-sample set would otherwise peak at GBs of lists).
    for start in range(0, len(text_records), _ENCODE_CHUNK):
        chunk = text_records[start:start + _ENCODE_CHUNK]
        prompts = [render_prompt(tokenizer, r.prompt_messages) for r in chunk]
        p_ids = _encode(tokenizer, prompts)
        full_ids = _encode(tokenizer, [p + r.response + eos for p, r in zip(prompts, chunk)])
        for pos, r, p, ids in zip(text_positions[start:start + _ENCODE_CHUNK], chunk, p_ids, full_ids):
            cut = ids[:max_length]
            labels = [IGNORE_INDEX] * min(len(p), len(cut)) + cut[len(p):]
            encoded[pos] = TokenizedSample(
                index=r.index, input_ids=TokenIds(cut), labels=TokenIds(labels), truncated=len(ids) > max_length,
                n_tokens=len(cut), n_response_tokens=count_response_tokens(labels))
    samples = []
    for pos, r in enumerate(records):
        if r.kind == "pretokenized":
            ids, labels = TokenIds(r.input_ids), TokenIds(r.labels)
            samples.append(TokenizedSample(
                index=r.index, input_ids=ids, labels=labels, truncated=False,
                n_tokens=len(ids), n_response_tokens=count_response_tokens(labels)))
        else:
            samples.append(encoded[pos])
    return samples


def load_tokenizer(source: str, *, option: str = "tokenizer"):
    """``AutoTokenizer.from_pretrained(source)``, or a ValueError in one line that names
    ``source`` and the ``option`` that would fix it."""
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # OSError, ValueError, and what a broken directory raises
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"could not load a tokenizer from {source} ({first}); pass "
                         f"{option} DIR") from None


def count_truncated(samples: Iterable[TokenizedSample]) -> int:
    return sum(1 for s in samples if s.truncated)


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(texts), _ENCODE_CHUNK):
        chunk = texts[start:start + _ENCODE_CHUNK]
        # verbose=False only silences the "longer than model_max_length" warning: the
        # sequences are cut to max_length right after, as docs/METHOD.md §2 does.
        encoded = tokenizer(chunk, add_special_tokens=False, verbose=False)
        out.extend(list(ids) for ids in encoded.input_ids)
    return out
