"""Fault injection: bad inputs and faults end cleanly (one clear line, no lost work, no trap).

Each test builds its own fault (corrupt, NaN, zero or mismatched adapters, out-of-vocabulary
ids, a kill mid-run, a concurrent run ...) and checks the rule: an error that names the
input and what would be right, raised before expensive work where it can be; a per-sample
status where one sample is bad; a non-zero exit when nothing useful was produced; no lost
or duplicated rows; no traceback.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sqsd_fast.testing.assertions import require_module
import torch

import sqsd_fast.options.checks as checks
import sqsd_fast.app.cli as cli
import sqsd_fast.app.pipeline as pipeline
from sqsd_fast.models.quiet import quiet_libraries
from sqsd_fast.data.records import read_records
from sqsd_fast.data.tokenize import TokenizedSample, tokenize_records
from sqsd_fast.io.atomic import current_umask
from sqsd_fast.io.checkpoint import run_record_path, sidecar_paths
from sqsd_fast.io.lock import output_lock
from sqsd_fast.io.writers import read_rows, write_rows
from sqsd_fast.scoring import SQSDScorer
from sqsd_fast.testing.fake_scorer import RECORDS, FakeScorer, make_workspace, score_args

require_module("peft")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from sqsd_fast.testing.toy_model import build_toy_assets
    root = tmp_path_factory.mktemp("faults_toy")
    with quiet_libraries():
        return build_toy_assets(root, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2)


@pytest.fixture
def ws(tmp_path):
    return make_workspace(tmp_path)


def _scorer(toy, **kwargs):
    args = dict(danger_state=toy.danger_state, danger_direction=toy.danger_direction,
                safety_direction=toy.safety_direction, backend="reference")
    args.update(kwargs)
    with quiet_libraries():
        return SQSDScorer.from_pretrained(toy.model_dir, **args)


def _samples(scorer, n=4):
    records = read_records(RECORDS[:n])
    return tokenize_records(records, scorer.tokenizer, max_length=64)


def _copy_adapter(src, dst: Path, change=None) -> Path:
    from safetensors.torch import load_file, save_file
    dst.mkdir()
    weights = load_file(os.path.join(src, "adapter_model.safetensors"))
    if change:
        weights = change(weights)
    save_file(weights, str(dst / "adapter_model.safetensors"))
    (dst / "adapter_config.json").write_text(Path(src, "adapter_config.json").read_text())
    return dst


def _one_line_error(capsys, code, argv, match):
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert match in err, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


# ---------------------------------------------------------------- scorer inputs (API)

def test_repeated_indices_are_refused_not_misaligned(toy):
    scorer = _scorer(toy)
    samples = _samples(scorer, 3)
    twice = samples + [TokenizedSample(0, s.input_ids, s.labels, False, s.n_tokens, s.n_response_tokens)
                       for s in samples[:1]]
    with pytest.raises(ValueError, match="positions 0 and 3 have the same index 0"):
        scorer.score(twice, progress=False)


def test_records_and_paths_are_accepted_and_rows_carry_ranks(toy, tmp_path):
    scorer = _scorer(toy)
    data = tmp_path / "d.jsonl"
    write_rows(data, RECORDS[:4])
    from_path = scorer.score(str(data), progress=False)
    from_records = scorer.score(read_records(str(data)), progress=False)
    assert [r["index"] for r in from_path] == [0, 1, 2, 3]
    assert from_path == from_records
    assert sorted(r["rank"] for r in from_path) == [1, 2, 3, 4]


def test_zero_direction_is_refused_naming_the_option(toy, tmp_path):
    zero = _copy_adapter(toy.danger_direction, tmp_path / "fresh_lora",
                         lambda w: {k: (torch.zeros_like(v) if "lora_B" in k else v) for k, v in w.items()})
    with pytest.raises(ValueError, match=r"danger_direction \S*fresh_lora: the direction is zero in every module"):
        _scorer(toy, danger_direction=str(zero))


@pytest.mark.parametrize("which", ["danger_direction", "danger_state"])
def test_nan_in_adapter_weights_named_at_load(toy, tmp_path, which):
    def poison(w):
        key = sorted(k for k in w if "lora_A" in k)[0]
        w[key] = w[key].clone()
        w[key][0, 0] = float("nan")
        return w
    bad = _copy_adapter(getattr(toy, which), tmp_path / "nan_lora", poison)
    with pytest.raises(ValueError, match=rf"{which} \S*nan_lora: adapter .* module \S+ lora_A holds NaN"):
        _scorer(toy, **{which: str(bad)})


def test_out_of_vocabulary_ids_labels_and_long_samples_named(toy):
    scorer = _scorer(toy)
    vocab = scorer.engine.model.get_input_embeddings().num_embeddings
    good = {"input_ids": [5, 6, 7, 8], "labels": [-100, 6, 7, 8]}
    with pytest.raises(ValueError, match=rf"record 1: token id {vocab + 3} is outside"):
        scorer.score([good, {"input_ids": [5, vocab + 3, 7], "labels": [-100, 6, 7]}], progress=False)
    with pytest.raises(ValueError, match=r"record 0: label -7 is outside"):
        scorer.score([{"input_ids": [5, 6, 7], "labels": [-100, -7, 7]}], progress=False)
    context = scorer.engine.model.config.max_position_embeddings
    long = {"input_ids": [5] * (context + 1), "labels": [5] * (context + 1)}
    with pytest.raises(ValueError, match=rf"record 0: {context + 1} tokens, longer than the model's context"):
        scorer.project([long], progress=False)


@pytest.mark.parametrize("fault, match", [
    ("config", "adapter_config.json is not valid JSON"),
    ("weights", "cannot read adapter_model.safetensors"),
    ("rank", "adapter_config.json says r = 3 but module"),
])
def test_damaged_adapters_named(toy, tmp_path, fault, match):
    bad = _copy_adapter(toy.danger_state, tmp_path / "damaged")
    if fault == "config":
        (bad / "adapter_config.json").write_text("{not json")
    elif fault == "weights":
        path = bad / "adapter_model.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    else:
        config = json.loads((bad / "adapter_config.json").read_text())
        config["r"] = 3
        (bad / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"danger_state \S*damaged: adapter \S*damaged\S*: {match}") as info:
        _scorer(toy, danger_state=str(bad))
    assert len(str(info.value)) < 400


def test_from_peft_model_leaves_the_callers_model_as_it_was(toy):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(toy.model_dir)
    model = PeftModel.from_pretrained(base, toy.danger_state, adapter_name="mine", is_trainable=True)
    model.load_adapter(toy.safety_state, adapter_name="safe", is_trainable=False)
    model.set_adapter("mine")
    model.train()
    layer = next(m for m in model.modules() if isinstance(getattr(m, "scaling", None), dict) and "safe" in m.scaling)
    layer.scaling["safe"] = 0.25
    before = {"grad": {n: p.requires_grad for n, p in model.named_parameters()},
              "train": {n: m.training for n, m in model.named_modules()},
              "active": model.active_adapter, "scaling": dict(layer.scaling)}
    scorer = SQSDScorer.from_peft_model(model, danger_state="mine", danger_direction=toy.danger_direction,
                                        safety_state="safe", safety_direction=toy.safety_direction,
                                        safety_state_scaling=1.0, backend="reference",
                                        tokenizer=_scorer(toy).tokenizer)
    rows = scorer.score(_samples(scorer), progress=False)
    by_name = scorer.project(_samples(scorer), state="mine", progress=False)   # the user's name
    assert all(r["status"] == "ok" for r in rows) and len(by_name) == len(rows)
    after = {"grad": {n: p.requires_grad for n, p in model.named_parameters()},
             "train": {n: m.training for n, m in model.named_modules()},
             "active": model.active_adapter, "scaling": dict(layer.scaling)}
    assert after == before


def test_non_finite_gradients_warn_once_per_run(toy):
    scorer = _scorer(toy)
    samples = _samples(scorer, 4)
    with torch.no_grad():
        scorer.engine.model.get_input_embeddings().weight[:] = float("nan")
    with pytest.warns(RuntimeWarning) as record:
        rows = scorer.project(samples, batch_size=1, progress=False)
    assert {r["status"] for r in rows} == {"non_finite_gradient"}
    assert len([w for w in record if "non-finite" in str(w.message)]) == 1


# ------------------------------------------------------------------- runs (CLI, pipeline)

def test_crash_in_first_batch_leaves_nothing_to_trip_over(ws, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.jsonl"
    monkeypatch.setattr(pipeline, "load_scorer", lambda o: FakeScorer(fail_after=0, error=RuntimeError))
    assert cli.main(score_args(ws, out, "--quiet")) == 1
    assert not any(p.exists() for p in sidecar_paths(out))
    assert "--resume" not in capsys.readouterr().err
    monkeypatch.setattr(pipeline, "load_scorer", lambda o: FakeScorer())
    assert cli.main(score_args(ws, out, "--quiet")) == 0          # plain retry, no trap


def test_no_sample_scored_exits_non_zero_but_writes_the_statuses(ws, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.jsonl"
    monkeypatch.setattr(pipeline, "load_scorer", lambda o: FakeScorer())
    argv = score_args(ws, out, "--quiet")
    argv[argv.index("--max-length") + 1] = "3"                    # every response cut away
    _one_line_error(capsys, 1, argv, "no sample could be scored (status: no_response_tokens)")
    assert {r["status"] for r in read_rows(out)} == {"no_response_tokens"}


def test_outputs_get_the_usual_file_mode(ws, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_scorer", lambda o: FakeScorer())
    out = tmp_path / "s.csv"
    assert cli.main(score_args(ws, out, "--quiet")) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~current_umask()


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_umask_is_read_without_being_changed(mask):
    from sqsd_fast.io.atomic import umask_from_probe, umask_from_proc
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        assert umask_from_proc() in (mask, None)  # None: no /proc (not Linux)
        assert umask_from_probe() == mask & 0o666
        assert os.umask(mask) == mask             # still what was set
    finally:
        os.umask(old)


def test_unwritable_output_is_found_first_and_named(ws, tmp_path, monkeypatch, capsys):
    def no_load(options):
        raise AssertionError("the model was loaded before --out was checked")
    monkeypatch.setattr(pipeline, "load_scorer", no_load)
    real_access = os.access
    monkeypatch.setattr(checks.os, "access",
                        lambda p, mode: False if Path(p) == tmp_path / "ro" else real_access(p, mode))
    (tmp_path / "ro").mkdir()
    _one_line_error(capsys, 1, score_args(ws, tmp_path / "ro" / "s.jsonl"), "is not writable")


def test_a_failing_write_names_the_output_not_a_temporary_file(tmp_path, monkeypatch):
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(ValueError, match=r"s\.jsonl: cannot write in .* \(Permission denied\)"):
        write_rows(tmp_path / "s.jsonl", [{"a": 1}])


def test_concurrent_run_on_the_same_output_is_refused(ws, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "load_scorer", lambda o: FakeScorer())
    out = tmp_path / "s.jsonl"
    script = ("import sys, time\nfrom sqsd_fast.io.lock import output_lock\n"
              "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _one_line_error(capsys, 1, score_args(ws, out, "--quiet"), "is being written by another run (pid")
    finally:
        holder.kill()
        holder.wait()
    assert cli.main(score_args(ws, out, "--quiet")) == 0          # the lock died with its holder
    with output_lock(out):
        pass


def test_device_without_cuda_is_a_clear_error(ws, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _one_line_error(capsys, 1, score_args(ws, tmp_path / "s.jsonl", "--device", "cuda"),
                    "--device cuda: CUDA is not available here")


def test_hub_id_without_network_fails_fast(ws, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    argv = score_args(ws, tmp_path / "s.jsonl")
    argv[argv.index("--model") + 1] = "no-such-org/no-such-model-1.5B"
    start = time.monotonic()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert time.monotonic() - start < 10
    assert "--model no-such-org/no-such-model-1.5B: not a local directory" in err, err


KILL_SCRIPT = """
import sys
import sqsd_fast.options.checks as checks
import sqsd_fast.app.cli as cli
import sqsd_fast.app.pipeline as pipeline
from sqsd_fast.testing.fake_scorer import FakeScorer
pipeline.load_scorer = lambda options: FakeScorer(sleep_after_first=60)
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGTERM")
def test_sigterm_keeps_completed_batches_and_says_how_to_resume(ws, tmp_path, monkeypatch):
    out = tmp_path / "s.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, *score_args(ws, out, "--quiet")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial, _ = sidecar_paths(out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (partial.exists() and partial.read_text().count("\n") >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "--resume" in err and "Traceback" not in err
    monkeypatch.setattr(pipeline, "load_scorer", lambda o: FakeScorer())
    assert cli.main(score_args(ws, out, "--quiet", "--resume")) == 0
    assert [r["index"] for r in read_rows(out)] == list(range(len(RECORDS)))


def test_subsets_refuses_data_other_than_what_was_scored(ws, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "load_scorer", lambda o: FakeScorer())
    scores = tmp_path / "s.jsonl"
    assert cli.main(score_args(ws, scores, "--quiet")) == 0
    assert run_record_path(scores).exists()
    other = tmp_path / "other.jsonl"
    write_rows(other, list(reversed(RECORDS)))
    base = ["subsets", "--scores", str(scores), "--out-dir", str(tmp_path / "sub"), "--num", "2"]
    _one_line_error(capsys, 1, base + ["--data", str(other)], "is not the data that was scored")
    assert not (tmp_path / "sub").exists()
    assert cli.main(base + ["--data", str(ws["data"])]) == 0
    assert "could not be checked" not in capsys.readouterr().out


def test_project_summary_does_not_speak_of_risk(ws, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "load_scorer", lambda o: FakeScorer())
    argv = ["project", "--model", str(ws["model"]), "--state", str(ws["danger_state"]),
            "--direction", str(ws["danger_direction"]), "--data", str(ws["data"]),
            "--out", str(tmp_path / "p.jsonl"), "--max-length", "64", "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "highest proj:" in out and "riskiest" not in out
