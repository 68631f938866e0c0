"""Tokenization must match docs/METHOD.md §2 token for token."""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest

from sqsd_fast.data.records import normalize_rows, read_records
from sqsd_fast.data.tokenize import (PLAIN_TEMPLATE, count_truncated, plain_prompt,
                                     tokenize_records)

DATA = Path(__file__).resolve().parent / "data"           # small files written for the tests
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@functools.lru_cache(maxsize=None)
def _toy_tokenizer():
    from sqsd_fast.testing.toy_model import build_toy_tokenizer
    return build_toy_tokenizer()


@pytest.fixture
def tok():
    return copy.deepcopy(_toy_tokenizer())


@pytest.fixture
def plain_tok():
    t = copy.deepcopy(_toy_tokenizer())
    t.chat_template = None
    return t


def section2(tokenizer, instruction, context, response, max_length=1024):
    """docs/METHOD.md §2, followed literally."""
    user = instruction if context.strip() == "" else instruction + "\n" + context
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}],
                                           tokenize=False, add_generation_prompt=True)
    p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    ids = tokenizer(prompt + response + tokenizer.eos_token,
                    add_special_tokens=False).input_ids[:max_length]
    labels = [-100] * min(len(p_ids), len(ids)) + ids[len(p_ids):]
    return ids, labels


RECORDS = [
    {"instruction": "Explain how photosynthesis works.", "context": "",
     "response": "Plants turn sunlight, water and CO2 into sugar."},
    {"instruction": "Summarize the text.", "context": "The sea is wide and the wind is free.",
     "response": "Wide sea, free wind."},
    {"instruction": "Translate 'good morning' into Spanish.", "context": "   ",
     "response": "Buenos días! 🌞"},
]


def test_matches_section2_with_and_without_context(tok):
    samples = tokenize_records(normalize_rows(RECORDS), tok)
    for s, r in zip(samples, RECORDS):
        ids, labels = section2(tok, r["instruction"], r["context"], r["response"])
        assert s.input_ids == ids, f"record {s.index}: input_ids differ from §2"
        assert s.labels == labels, f"record {s.index}: labels differ from §2"
        assert s.n_tokens == len(ids) and not s.truncated
        assert s.n_response_tokens == sum(1 for x in labels[1:] if x != -100)
        assert s.labels[-1] == tok.eos_token_id        # the eos token is a response label
        assert s.labels[0] == -100 and s.n_response_tokens > 0
    assert samples[1].n_tokens > samples[0].n_tokens - 20   # context is in the prompt


def test_truncation_matches_section2_and_is_counted(tok):
    long = dict(RECORDS[1], response="word " * 200)
    recs = normalize_rows([RECORDS[0], long])
    full = tokenize_records(recs, tok)
    max_length = full[1].n_tokens - 50
    cut = tokenize_records(recs, tok, max_length=max_length)
    assert [s.truncated for s in cut] == [False, True] and count_truncated(cut) == 1
    ids, labels = section2(tok, long["instruction"], long["context"], long["response"],
                           max_length=max_length)
    assert cut[1].input_ids == ids and cut[1].labels == labels
    assert cut[1].n_tokens == max_length


def test_truncation_inside_the_prompt_leaves_no_response_tokens(tok):
    recs = normalize_rows([RECORDS[1]])
    s = tokenize_records(recs, tok, max_length=3)[0]
    ids, labels = section2(tok, RECORDS[1]["instruction"], RECORDS[1]["context"],
                           RECORDS[1]["response"], max_length=3)
    assert s.input_ids == ids and s.labels == labels == [-100] * 3
    assert s.truncated and s.n_response_tokens == 0


def test_chat_form_uses_the_prompt_turns_and_last_assistant(tok):
    msgs = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Tell me a fact."},
            {"role": "assistant", "content": "Water boils at 100 C at sea level."}]
    s = tokenize_records(normalize_rows([{"messages": msgs}]), tok)[0]
    prompt = tok.apply_chat_template(msgs[:3], tokenize=False, add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False).input_ids
    ids = tok(prompt + msgs[3]["content"] + tok.eos_token, add_special_tokens=False).input_ids
    assert s.input_ids == ids
    assert s.labels == [-100] * len(p_ids) + ids[len(p_ids):]


def test_plain_template_without_chat_template(plain_tok):
    r = RECORDS[1]
    s = tokenize_records(normalize_rows([r]), plain_tok)[0]
    user = r["instruction"] + "\n" + r["context"]
    prompt = PLAIN_TEMPLATE.format(user=user)
    assert prompt == f"### Instruction:\n{user}\n\n### Response:\n"
    p_ids = plain_tok(prompt, add_special_tokens=False).input_ids
    ids = plain_tok(prompt + r["response"] + plain_tok.eos_token,
                    add_special_tokens=False).input_ids
    assert s.input_ids == ids and s.labels == [-100] * len(p_ids) + ids[len(p_ids):]
    multi = plain_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                          {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}])
    assert multi == ("### System:\nS\n\n### Instruction:\nU\n\n### Response:\nA\n\n"
                     "### Instruction:\nV\n\n### Response:\n")


def test_pretokenized_passes_through_unchanged(tok):
    ids = list(range(10, 40))
    labels = [-100] * 10 + ids[10:]
    recs = normalize_rows([{"input_ids": ids, "labels": labels}, RECORDS[0]])
    out = tokenize_records(recs, tok, max_length=5)          # no truncation for these
    assert out[0].input_ids == ids and out[0].labels == labels and not out[0].truncated
    assert out[0].n_tokens == 30 and out[0].n_response_tokens == 20
    assert out[1].truncated and [s.index for s in out] == [0, 1]


def test_rejects_bad_max_length_and_missing_eos(tok):
    recs = normalize_rows([RECORDS[0]])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_length must be a positive integer"):
            tokenize_records(recs, tok, max_length=bad)
    tok.eos_token = None
    with pytest.raises(ValueError, match="no eos_token"):
        tokenize_records(recs, tok)


def _raw_rows(path: Path) -> list[dict]:
    import json
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else \
        [json.loads(line) for line in text.splitlines() if line.strip()]


def _check_file_matches_section2(tok, path: Path, max_length: int, every: int = 1) -> list:
    """Every `every`-th record of an instruction-form file (and the last) against §2."""
    records = read_records(path)
    samples = tokenize_records(records, tok, max_length=max_length)
    assert len(samples) == len(records) and [s.index for s in samples] == list(range(len(records)))
    assert count_truncated(samples) == sum(s.truncated for s in samples)
    raw = _raw_rows(path)
    assert len(raw) == len(records)
    for i in list(range(0, len(raw), every)) + [len(raw) - 1]:
        r = raw[i]
        args = (r["instruction"], r.get("context", r.get("input", "")),
                r.get("response", r.get("output")))
        ids, labels = section2(tok, *args, max_length=max_length)
        assert samples[i].input_ids == ids and samples[i].labels == labels, f"record {i}"
        full, _ = section2(tok, *args, max_length=10**9)
        assert samples[i].truncated == (len(full) > max_length), f"record {i}"
    return samples


@pytest.mark.parametrize("name", ["dolly_like.jsonl", "alpaca_like.json"])
def test_data_files_match_section2(tok, name):
    """Dolly- and Alpaca-format files (tests/data) token for token, one record truncated."""
    samples = _check_file_matches_section2(tok, DATA / name, max_length=256)
    assert all(s.n_response_tokens > 0 for s in samples)
    if name.startswith("dolly"):
        assert count_truncated(samples) == 1           # the long response, cut on the right
        assert max(s.n_tokens for s in samples) == 256


def test_chat_file_uses_the_user_turn_and_the_refusal(tok):
    records = read_records(DATA / "refusal_anchors_like.jsonl")
    samples = tokenize_records(records, tok)
    for s, r in zip(samples, _raw_rows(DATA / "refusal_anchors_like.jsonl")):
        user, assistant = r["messages"]
        prompt = tok.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        ids = tok(prompt + assistant["content"] + tok.eos_token, add_special_tokens=False).input_ids
        assert s.input_ids == ids and s.labels == [-100] * len(p_ids) + ids[len(p_ids):]
        assert not s.truncated and s.n_response_tokens > 0


def test_shared_alpaca_matches_section2(tok):
    """The full Alpaca subset beside the dev checkout, sampled (skipped on a clean clone)."""
    path = SHARED_DATA / "alpaca_5000.json"
    if not path.exists():
        pytest.skip(f"{path} is absent (shared data only exists beside the dev checkout)")
    _check_file_matches_section2(tok, path, max_length=1024, every=125)


def test_samples_hold_32_bit_token_arrays_across_tokenizer_chunks(tok, monkeypatch):
    """Records tokenized a few at a time (chunks of 3 here) give the §2 ids of each, held as
    TokenIds: 4 bytes a token, equal to the same ints as a list, sliced as TokenIds, and
    padded into a batch exactly as a list would be."""
    import sys

    import sqsd_fast.data.tokenize as tokenize
    import torch

    from sqsd_fast.data.batching import collate
    from sqsd_fast.data.tokenize import TokenIds, TokenizedSample
    monkeypatch.setattr(tokenize, "_ENCODE_CHUNK", 3)
    samples = _check_file_matches_section2(tok, DATA / "dolly_like.jsonl", max_length=256)
    assert len(samples) > 3 and all(isinstance(s.input_ids, TokenIds) for s in samples)
    longest = max(samples, key=lambda s: s.n_tokens)
    assert sys.getsizeof(longest.input_ids) < 4 * longest.n_tokens + 128 < sys.getsizeof(list(longest.input_ids))
    assert isinstance(longest.labels[1:], TokenIds) and longest.labels[1:] == list(longest.labels)[1:]
    assert longest.input_ids != list(longest.input_ids)[:-1] and longest.input_ids != (1, 2)
    as_lists = [TokenizedSample(s.index, list(s.input_ids), list(s.labels), s.truncated, s.n_tokens,
                                s.n_response_tokens) for s in samples[:4]]
    for got, want in zip(collate(samples[:4], 0).values(), collate(as_lists, 0).values()):
        assert torch.equal(got, want)
