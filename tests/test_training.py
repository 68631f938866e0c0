"""train-adapter (sqsd_fast.training): LoRA fine-tuning on a tiny random Llama.

Every run trains a few optimizer steps on 8 toy samples on the CPU; the adapters it
writes must load and score like any other, continue from an init adapter, resume
exactly, merge exactly, and bad input must be refused before any training.
"""
import json
from pathlib import Path

import pytest
import torch

from sqsd_fast.options import OptionError
from sqsd_fast.models.adapters import read_adapter, state_factors
from sqsd_fast.testing.toy_model import TOY_CORPUS, build_toy_model, build_toy_tokenizer
from sqsd_fast.training import TrainAdapterOptions, format_summary, train_adapter

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft 0.21 on transformers 5

# Two optimizer steps per epoch (8 samples, batch 4); a high learning rate so that the
# loss visibly falls within three epochs.
FAST = dict(r=4, lora_alpha=8, per_device_train_batch_size=4, num_train_epochs=3, learning_rate=2e-2,
            max_length=64, quiet=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The toy model's matrices are tiny: extra threads only add synchronisation, and on a
    busy 2-core machine they made each run 5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    tok = build_toy_tokenizer()
    model_dir = root / "model"
    build_toy_model(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    other_dir = root / "other_model"        # another architecture size: adapters won't fit
    build_toy_model(tok, hidden_size=32, intermediate_size=64).save_pretrained(other_dir)
    tok.save_pretrained(other_dir)
    rows = [{"instruction": TOY_CORPUS[i], "response": TOY_CORPUS[i + 1]}
            for i in range(1, 17, 2)]
    data = root / "data.json"
    data.write_text(json.dumps(rows))
    return dict(root=root, model=str(model_dir), other=str(other_dir), data=str(data),
                tokenizer=tok)


@pytest.fixture(scope="module")
def trained(toy):
    """One run with a merged model, shared by the tests that only read its outputs."""
    out, merged = toy["root"] / "lora", toy["root"] / "merged"
    result = train_adapter(model=toy["model"], data=toy["data"], out=str(out),
                           merge_to=str(merged), **FAST)
    return result, out, merged


def _factors_equal(a, b, atol=0.0):
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name].A, b[name].A, atol=atol, rtol=0)
        torch.testing.assert_close(a[name].B, b[name].B, atol=atol, rtol=0)


class StopAfterSaves:
    """Interrupts training (as Ctrl-C would) right after the n-th checkpoint is saved."""

    def __new__(cls, n):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            saves = 0

            def on_save(self, args, state, control, **kwargs):
                self.saves += 1
                if self.saves >= n:
                    raise KeyboardInterrupt
        return _Stop()


def CountSteps():
    from transformers import TrainerCallback

    class _Count(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1
    return _Count()


# ------------------------------------------------------------------ training works


def test_loss_is_on_response_tokens_only(toy):
    """The first logged loss (one step over all 8 samples, the LoRA's B = 0 so the model
    is the base model) equals the base model's mean loss over response tokens alone."""
    from transformers import AutoModelForCausalLM

    from sqsd_fast.data.batching import collate
    from sqsd_fast.data.records import read_records
    from sqsd_fast.data.tokenize import tokenize_records
    result = train_adapter(model=toy["model"], data=toy["data"],
                           out=str(toy["root"] / "one_step"),
                           **{**FAST, "per_device_train_batch_size": 8, "num_train_epochs": 1, "lora_dropout": 0.0})
    samples = tokenize_records(read_records(toy["data"]), toy["tokenizer"], max_length=64)
    batch = collate(samples, toy["tokenizer"].pad_token_id)
    assert (batch["labels"] == -100).sum() > (batch["attention_mask"] == 0).sum()  # prompts masked
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(toy["model"])(**batch).loss.item()
    assert result.epoch_losses[0] == pytest.approx(expected, abs=1e-5)


def test_loss_falls_and_summary_is_saved(trained):
    result, out, _ = trained
    assert len(result.epoch_losses) == 3
    assert result.epoch_losses[-1] < result.epoch_losses[0] - 0.05, result.epoch_losses
    assert result.final_loss == result.epoch_losses[-1]
    assert result.n_samples == 8 and result.global_step == 6
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["epoch_losses"] == result.epoch_losses
    assert summary["options"]["learning_rate"] == FAST["learning_rate"]
    assert summary["n_trainable_params"] == result.n_trainable_params > 0
    assert not (out / "checkpoints").exists()          # removed once finished
    text = format_summary(result)
    assert "training loss per epoch" in text and str(out) in text


def test_output_is_an_adapter_that_scores(toy, trained):
    from sqsd_fast.data.records import read_records
    from sqsd_fast.data.tokenize import tokenize_records
    from sqsd_fast.scoring.scorer import SQSDScorer
    _, out, _ = trained
    factors = read_adapter(out)
    assert len(factors) == 2 * 7                        # all linear modules, 2 layers
    assert all(f.A.shape[0] == 4 for f in factors.values())
    scorer = SQSDScorer.from_pretrained(toy["model"], danger_state=str(out),
                                        danger_direction=str(out), safety_direction=str(out))
    samples = tokenize_records(read_records(toy["data"]), scorer.tokenizer)
    rows = scorer.score(samples, batch_size=4, progress=False)
    assert [r["status"] for r in rows] == ["ok"] * 8
    assert all(torch.isfinite(torch.tensor(r["sqsd"])) for r in rows)


def test_merged_model_equals_the_peft_model(toy, trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    _, out, merged = trained
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(toy["model"]), str(out)).eval()
    merged_model = AutoModelForCausalLM.from_pretrained(merged).eval()
    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok(["Why is the sky blue?", "Plants use sunlight"], return_tensors="pt",
              padding=True)
    with torch.no_grad():
        expected = peft_model(**ids).logits
        got = merged_model(**ids).logits
    assert (got - expected).abs().max().item() < 1e-5
    assert not any(".lora_" in n for n, _ in merged_model.named_parameters())


def test_step_logging_and_checkpointing_change_nothing(toy, trained):
    """--logging-steps 1 gives the same per-epoch means as per-epoch logging, and
    activation checkpointing (recomputed with the same dropout masks) the same adapter."""
    first, out, _ = trained
    out2 = toy["root"] / "per_step"
    result = train_adapter(model=toy["model"], data=toy["data"], out=str(out2),
                           logging_steps=1, gradient_checkpointing=True, **FAST)
    assert len(result.loss_log) == result.global_step == 6
    assert result.epoch_losses == pytest.approx(first.epoch_losses, abs=1e-5)
    _factors_equal(read_adapter(out2), read_adapter(out), atol=1e-5)


def test_init_adapter_starts_from_that_adapter(toy, trained):
    from transformers import TrainerCallback
    _, first, _ = trained
    seen = {}

    class Grab(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen.update({n: f for n, f in state_factors(model, "default").items()})
            seen.update({n: type(f)(f.A.detach().clone().cpu(), f.B.detach().clone().cpu())
                         for n, f in seen.items()})

    out = toy["root"] / "continued"
    result = train_adapter(model=toy["model"], data=toy["data"], out=str(out),
                           init_adapter=str(first), callbacks=[Grab()],
                           **{**FAST, "num_train_epochs": 1, "r": None, "lora_alpha": None})
    _factors_equal(seen, read_adapter(first))
    assert result.lora["r"] == 4 and result.lora["lora_alpha"] == 8
    # it trained on: the saved adapter moved away from where it started
    moved = max((read_adapter(out)[n].B - read_adapter(first)[n].B).abs().max().item()
                for n in seen)
    assert moved > 0


@pytest.mark.parametrize("save_steps,stop_after", [(None, 1), (1, 3)],
                         ids=["epoch-boundary", "mid-epoch"])
def test_resume_gives_the_uninterrupted_adapter(toy, save_steps, stop_after):
    common = dict(model=toy["model"], data=toy["data"], save_steps=save_steps,
                  **{**FAST, "lora_dropout": 0.1})   # dropout: the RNG state must resume too
    straight = toy["root"] / f"straight-{save_steps}"
    full = train_adapter(out=str(straight), **common)

    out = toy["root"] / f"interrupted-{save_steps}"
    with pytest.raises(KeyboardInterrupt):
        train_adapter(out=str(out), callbacks=[StopAfterSaves(stop_after)], **common)
    assert not (out / "adapter_config.json").exists()   # never looks finished
    with pytest.raises(ValueError, match="unfinished run.*--resume"):
        train_adapter(out=str(out), **common)
    with pytest.raises(ValueError, match="learning_rate differs"):
        train_adapter(out=str(out), resume=True, **{**common, "learning_rate": 1e-3})

    counter = CountSteps()
    resumed = train_adapter(out=str(out), resume=True, callbacks=[counter], **common)
    assert resumed.resumed_from is not None and resumed.global_step == full.global_step
    done_before = 2 * stop_after if save_steps is None else stop_after
    assert counter.steps == full.global_step - done_before    # it did not start over
    _factors_equal(read_adapter(out), read_adapter(straight), atol=1e-6)
    if save_steps is None:   # epoch logs are whole when the cut is at an epoch's end
        assert resumed.epoch_losses == pytest.approx(full.epoch_losses, abs=1e-6)


# --------------------------------------------------------------------- bad input


def test_finished_out_is_refused_then_overwritten(toy, trained):
    _, out, _ = trained
    before = (out / "adapter_model.safetensors").read_bytes()
    for resume in (False, True):
        with pytest.raises(ValueError, match="already holds a finished adapter"):
            train_adapter(model=toy["model"], data=toy["data"], out=str(out), resume=resume,
                          **FAST)
    assert (out / "adapter_model.safetensors").read_bytes() == before
    copy = toy["root"] / "overwrite_me"
    copy.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (copy / name).write_bytes((out / name).read_bytes())
    result = train_adapter(model=toy["model"], data=toy["data"], out=str(copy),
                           overwrite=True, **{**FAST, "num_train_epochs": 1, "r": 2})
    assert result.global_step == 2 and read_adapter(copy)
    assert all(f.A.shape[0] == 2 for f in read_adapter(copy).values())


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_bad_data_is_refused_before_training(toy, tmp_path):
    base = dict(model=toy["model"], **FAST)
    cases = [
        (_write(tmp_path / "empty.jsonl", ""), "empty|no records"),
        (_write(tmp_path / "empty.json", "[]"), "empty|no records"),
        (toy["data"], "has a response token left after truncation to --max-length 8"),   # with max_length=8 below
    ]
    for i, (data, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        extra = {"max_length": 8} if data == toy["data"] else {}
        with pytest.raises(ValueError, match=message):
            train_adapter(data=data, out=str(out), **{**base, **extra})
        assert not out.exists()                          # nothing written


def test_bad_paths_are_refused_before_training(toy, trained, tmp_path):
    _, lora, _ = trained
    not_lora = tmp_path / "not_lora"
    not_lora.mkdir()
    other = tmp_path / "other_lora"
    train_adapter(model=toy["other"], data=toy["data"], out=str(other),
                  **{**FAST, "num_train_epochs": 1})
    full = tmp_path / "full"
    full.mkdir()
    (full / "weights.bin").write_text("x")
    base = dict(model=toy["model"], data=toy["data"], **FAST)
    cases = [
        (dict(init_adapter=str(not_lora)), "no adapter_config.json"),
        (dict(init_adapter=str(other)), "different base model"),
        (dict(init_adapter=str(lora), r=8), "r 8 differs from the init adapter's 4"),
        (dict(merge_to=str(full)), "merge-to .* not an empty directory"),
        (dict(target_modules="q_proj,qkv"), "no module named 'qkv'"),
        (dict(model=str(tmp_path / "missing")), "--model .*not found"),
    ]
    for i, (kwargs, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises(ValueError, match=message):
            train_adapter(out=str(out), **{**base, **kwargs})
        assert not out.exists()
    with pytest.raises(ValueError, match="not empty .*weights.bin"):
        train_adapter(out=str(full), **base)


@pytest.mark.parametrize("kwargs,option", [
    (dict(resume=True, overwrite=True), "overwrite"),
    (dict(dtype="float16"), "dtype"),
    (dict(lr_scheduler_type="sawtooth"), "lr_scheduler_type"),
    (dict(warmup_ratio=1.5), "warmup_steps"),           # the earlier name of warmup_steps
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(lora_dropout=1.0), "lora_dropout"),
    (dict(device="cuda:1"), "device"),
    (dict(device="cpu", use_cpu=False), "device"),
    (dict(num_epochs=0), "num_train_epochs"),
    (dict(num_epochs=2, num_train_epochs=2), "num_epochs"),
    (dict(target_modules="q_proj,,v_proj"), "target_modules"),
    (dict(merge_to="x/out"), "merge_to"),
    (dict(optim="adamw_sideways"), "training_arguments"),  # TrainingArguments' own check
])
def test_bad_options_name_the_option(kwargs, option):
    with pytest.raises(OptionError) as err:
        TrainAdapterOptions.from_keywords(model="m", data="d.json", out="x/out", **kwargs)
    assert err.value.option == option and "\n" not in str(err.value)


def test_the_options_are_the_trainers_training_arguments():
    from transformers import TrainingArguments
    opts = TrainAdapterOptions(model="m", data="d.json", out="x/out", dtype="bfloat16", logging_steps=5)
    assert isinstance(opts, TrainingArguments)
    # set from the other options
    assert opts.output_dir == str(Path("x/out") / "checkpoints") and opts.bf16 and not opts.fp16
    assert (opts.logging_strategy, opts.save_strategy) == ("steps", "epoch")
    # defaults train-adapter changes, each said in its help
    assert (opts.learning_rate, opts.per_device_train_batch_size, opts.warmup_steps, opts.lr_scheduler_type,
            opts.save_total_limit, opts.use_cpu, opts.remove_unused_columns) == \
        (1e-4, 4, 0.03, "cosine", 2, True, False)
    assert opts.to_dict()["lr_scheduler_type"] == "cosine"    # JSON values, as TrainingArguments'


def test_earlier_names_still_work_from_python_and_the_cli():
    from sqsd_fast.app.cli import build_parser, parse_options
    given = dict(model="m", data="d.json", out="o")
    earlier = TrainAdapterOptions.from_keywords(**given, num_epochs=2, batch_size=8, warmup_ratio=0.1,
                                                gradient_checkpointing=True, device="cuda")
    now = TrainAdapterOptions(**given, num_train_epochs=2, per_device_train_batch_size=8, warmup_steps=0.1,
                              activation_checkpointing=True, use_cpu=False)
    by_cli = parse_options(build_parser("train-adapter"), [
        "train-adapter", "--model", "m", "--data", "d.json", "--out", "o", "--num-epochs", "2",
        "--batch-size", "8", "--warmup-ratio", "0.1", "--gradient-checkpointing", "--device", "cuda"])
    assert earlier.to_dict() == now.to_dict() == by_cli.to_dict()
    assert earlier.train_device == "cuda" and now.gradient_checkpointing   # TrainingArguments mirrors it


def test_the_fingerprint_keeps_earlier_names_and_counts_other_training_arguments_when_set(tmp_path):
    data = tmp_path / "d.json"
    data.write_text("[]")
    given = dict(model=str(tmp_path), data=str(data), out=str(tmp_path / "o"))
    plain = TrainAdapterOptions(**given).fingerprint(whole_file="data")
    # the keys runs started before the options were TrainingArguments recorded
    assert (plain["num_epochs"], plain["batch_size"], plain["warmup_ratio"], plain["lr_scheduler_type"]) == \
        (3, 4, 0.03, "cosine")
    assert not {"num_train_epochs", "per_device_train_batch_size", "optim", "max_grad_norm"} & set(plain)
    clipped = TrainAdapterOptions(**given, max_grad_norm=0.5).fingerprint(whole_file="data")
    assert {k: v for k, v in clipped.items() if plain.get(k) != v} == {"max_grad_norm": 0.5}


def test_any_training_argument_reaches_the_trainer(toy, tmp_path):
    # From Python every TrainingArguments field can be given, as to TRL's SFTConfig: SGD here.
    from transformers import TrainerCallback
    seen = {}

    class Look(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            seen["args"], seen["optimizer"] = args, getattr(optimizer, "optimizer", optimizer)

    result = train_adapter(model=toy["model"], data=toy["data"], out=str(tmp_path / "sgd"), callbacks=[Look()],
                           optim="sgd", **{**FAST, "num_train_epochs": 1})
    assert isinstance(seen["args"], TrainAdapterOptions) and seen["args"].optim == "sgd"
    assert isinstance(seen["optimizer"], torch.optim.SGD)
    assert json.loads((tmp_path / "sgd" / "train_summary.json").read_text())["options"]["optim"] == "sgd"
    assert result.final_loss is not None


def test_scheduler_choices_are_transformers_schedules():
    from transformers.trainer_utils import SchedulerType

    from sqsd_fast.options.train_checks import SCHEDULERS
    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}


def test_options_build_a_command_line_parser():
    from transformers import HfArgumentParser
    (opts,) = HfArgumentParser(TrainAdapterOptions).parse_args_into_dataclasses(
        ["--model", "m", "--data", "d.json", "--out", "o", "--r", "16", "--resume",
         "--target_modules", "q_proj,v_proj", "--lr_scheduler_type", "linear"])
    assert (opts.r, opts.resume, opts.target_modules, opts.lr_scheduler_type) == \
        (16, True, "q_proj,v_proj", "linear")
    assert opts.lora_settings()["lora_alpha"] == 16.0 and opts.num_train_epochs == 3


# ------------------------------------------------------------------ merge-adapter


def _weights(directory) -> dict:
    from safetensors.torch import load_file
    return {k: v for f in sorted(Path(directory).glob("*.safetensors")) for k, v in load_file(f).items()}


def test_merge_adapter_gives_merge_to_weights_bit_for_bit(toy, trained, tmp_path):
    from sqsd_fast.training.merge import MERGE_RECORD, merge_adapter
    _, lora, merged = trained
    out = tmp_path / "merged_later"
    result = merge_adapter(model=toy["model"], adapter=str(lora), out=str(out), quiet=True)
    assert result.n_modules == len(read_adapter(lora)) > 0
    expected, got = _weights(merged), _weights(out)
    assert set(got) == set(expected) and not any(".lora_" in k for k in got)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    assert (out / "tokenizer.json").exists() or (out / "tokenizer_config.json").exists()
    record = json.loads((out / MERGE_RECORD).read_text())
    assert record["options"]["adapter"] == str(lora)


def test_merge_adapter_is_w_plus_scaled_ba(toy, trained, tmp_path):
    """Against the formula itself, computed in float64: W + (alpha / r) B A per adapted
    module (the merge runs in float32: float32 rounding is the tolerance); nothing else moves."""
    from sqsd_fast.training.merge import merge_adapter
    _, lora, _ = trained
    out = tmp_path / "merged_formula"
    merge_adapter(model=toy["model"], adapter=str(lora), out=str(out), quiet=True)
    base = _weights(toy["model"])
    config = json.loads((lora / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    got = _weights(out)
    factors = read_adapter(lora)
    assert any(f.B.abs().max() > 0 for f in factors.values())      # trained: B is not zero
    for name, f in factors.items():
        key = f"{name}.weight"
        expected = base[key].double() + scale * (f.B.double() @ f.A.double())
        assert torch.allclose(got[key].double(), expected, rtol=0, atol=1e-6), key
    untouched = set(base) - {f"{n}.weight" for n in factors}
    assert untouched and all(torch.equal(got[k], base[k]) for k in untouched)


def test_merge_adapter_refuses_bad_input_before_loading(toy, trained, tmp_path, capsys):
    from sqsd_fast.app.cli import main
    from sqsd_fast.training.merge import merge_adapter
    _, lora, _ = trained
    other = tmp_path / "other_lora"
    train_adapter(model=toy["other"], data=toy["data"], out=str(other), **{**FAST, "num_train_epochs": 1})
    full = tmp_path / "full"
    full.mkdir()
    (full / "x.bin").write_text("x")
    cases = [(dict(out=str(full)), "--out .*full exists and is not an empty directory"),
             (dict(out=str(tmp_path / "no" / "such")), "--out .*parent directory .* does not exist"),
             (dict(adapter=str(tmp_path / "missing")), "--adapter .*missing: directory not found"),
             (dict(adapter=str(tmp_path)), "--adapter .*not a LoRA adapter directory"),
             (dict(adapter=str(other)), "--adapter .*other_lora does not fit --model"),
             (dict(model=str(tmp_path / "nomodel")), "--model .*not found")]
    for i, (kwargs, message) in enumerate(cases):
        args = {"model": toy["model"], "adapter": str(lora), "out": str(tmp_path / f"out{i}"),
                "quiet": True, **kwargs}
        with pytest.raises(ValueError, match=message):
            merge_adapter(**args)
        assert not (tmp_path / f"out{i}").exists()
    code = main(["merge-adapter", "--model", toy["model"], "--adapter", str(other), "--out",
                 str(tmp_path / "cli_out")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "does not fit --model" in err


def test_a_launch_of_several_processes_is_refused_before_anything_is_written(toy, tmp_path, monkeypatch):
    """Under torchrun each process would take --out; refused in one line instead of rank 1
    failing on rank 0's lock."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "lora"
    with pytest.raises(ValueError, match="train-adapter runs in one process, not as one of 2"):
        train_adapter(model=toy["model"], data=toy["data"], out=str(out), **FAST)
    assert not out.exists()
