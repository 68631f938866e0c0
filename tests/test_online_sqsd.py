"""Online SQSD (``OnlineSQSD`` + ``SampleFields``): every sample scored from the training
step's own forward and backward. At a learning rate of 0 and no dropout, the weights never
move, so each online score must equal the offline score of the same sample at the same
state (``GradientStats.direction_scores``, a separate pass); with gradient accumulation and
with gradient checkpointing too. Then: real training writes a row per sample per step, a
resume replays, TRL's SFTTrainer carries the identity, and a trainer without the mixin is
refused."""
from __future__ import annotations

import json
import math

import pytest
import torch

from sqsd_fast.models.quiet import quiet_libraries

RECORDS = [{"instruction": f"tell me about the {w} number {i}", "response": "it is " + f"{w} " * (i % 4 + 1)}
           for i, w in enumerate(["odd", "even", "large", "small", "prime", "round", "tiny"])]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from sqsd_fast.testing.toy_model import build_toy_assets
    root = tmp_path_factory.mktemp("online")
    with quiet_libraries():
        assets = build_toy_assets(root, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2, r=3,
                                  alpha=6, target_modules=("q_proj", "v_proj", "down_proj"))
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return assets, root


def _peft_model(assets, seed=0, dropout=0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    with quiet_libraries():
        base = AutoModelForCausalLM.from_pretrained(assets.model_dir)
    # random A and B (not B = 0), so both terms of the induced update are exercised
    return get_peft_model(base, LoraConfig(r=2, lora_alpha=5, lora_dropout=dropout, init_lora_weights=False,
                                           target_modules=["q_proj", "v_proj", "down_proj"]))


def _samples(assets, root):
    from sqsd_fast.data.records import read_records
    from sqsd_fast.data.tokenize import load_tokenizer, tokenize_records
    from sqsd_fast.options import ProjectOptions
    tok = load_tokenizer(assets.model_dir)
    fields = ProjectOptions(model="m", direction="d", data="x", out="o").field_names()
    return tokenize_records(read_records(str(root / "train.jsonl"), fields), tok, max_length=64), tok


def _train(model, samples, tok, tmp_path, callback, **args):
    from transformers import Trainer, TrainingArguments

    from sqsd_fast.data.batching import pad_id
    from sqsd_fast.training.data import ResponseOnlyCollator
    from sqsd_fast.training.sample_fields import SAMPLE_INDEX, FieldsCollator, SampleFields

    class FieldsTrainer(SampleFields, Trainer):
        pass
    settings = dict(output_dir=str(tmp_path / "ckpt"), per_device_train_batch_size=3, num_train_epochs=1,
                    learning_rate=0.0, weight_decay=0.0, report_to=[], use_cpu=True, save_strategy="no",
                    disable_tqdm=True, remove_unused_columns=False, label_names=["labels"], seed=0)
    settings.update(args)
    trainer = FieldsTrainer(model=model, args=TrainingArguments(**settings), train_dataset=samples,
                            data_collator=FieldsCollator(ResponseOnlyCollator(pad_id(tok)), (SAMPLE_INDEX,)),
                            callbacks=[callback])
    trainer.train()
    return trainer


@pytest.mark.parametrize("extra", [{}, {"gradient_accumulation_steps": 2},
                                   {"activation_checkpointing": True,
                                    "activation_checkpointing_kwargs": {"use_reentrant": False}}],
                         ids=["plain", "grad-accumulation", "checkpointing"])
def test_online_scores_equal_offline_scores_at_the_same_weights(toy, tmp_path, extra):
    from sqsd_fast.influence import GradientStats
    from sqsd_fast.training.online import OnlineSQSD
    assets, root = toy
    samples, tok = _samples(assets, root)
    model = _peft_model(assets)
    directions = {"danger": assets.danger_direction, "safety": assets.safety_direction}
    online = OnlineSQSD(directions, out_dir=tmp_path / "out", backend="reference")
    _train(model, samples, tok, tmp_path, online, **extra)
    offline = GradientStats(model, adapter="default", tokenizer=tok, backend="reference").direction_scores(
        samples, [assets.danger_direction, assets.safety_direction])
    expected = {i: (float(c[0]), float(c[1])) for i, c in zip(offline.indices, offline.direction_cosine)}
    assert sorted(r["sample_index"] for r in online.rows) == sorted(s.index for s in samples)
    for row in online.rows:
        d, s = expected[row["sample_index"]]
        assert math.isclose(row["danger_proj"], d, rel_tol=1e-4, abs_tol=1e-5), (row, d)
        assert math.isclose(row["safety_proj"], s, rel_tol=1e-4, abs_tol=1e-5), (row, s)
        assert math.isclose(row["sqsd"], d - s, rel_tol=1e-4, abs_tol=1e-5)
    assert len({round(r["sqsd"], 5) for r in online.rows}) == len(samples)      # not one constant
    from sqsd_fast.training.online import read_scores
    written = read_scores(tmp_path / "out")
    assert [(r["step"], r["sample_index"]) for r in written] == sorted((r["step"], r["sample_index"])
                                                                       for r in online.rows)
    summary = (tmp_path / "out" / "online_summary.csv").read_text().splitlines()
    assert summary[0] == "epoch,sample_index,n_steps,danger_proj,safety_proj,sqsd" and len(summary) == 1 + len(samples)


def test_training_writes_a_row_per_sample_per_step_and_the_scores_move(toy, tmp_path):
    from sqsd_fast.training.online import OnlineSQSD, epoch_means, read_scores
    assets, root = toy
    samples, tok = _samples(assets, root)
    online = OnlineSQSD({"danger": assets.danger_direction, "safety": assets.safety_direction},
                        out_dir=tmp_path / "out", backend="reference")
    _train(_peft_model(assets, dropout=0.1), samples, tok, tmp_path, online, learning_rate=5e-2,
           num_train_epochs=3)
    rows = read_scores(tmp_path / "out")
    assert len(rows) == 3 * len(samples)
    assert {r["epoch"] for r in rows} == {1, 2, 3} and max(r["step"] for r in rows) == 9   # 3 steps per epoch
    means = epoch_means(rows, "sqsd")
    assert all(len(per) == len(samples) for per in means.values())
    first, last = means[1], means[3]
    assert max(abs(first[i] - last[i]) for i in first) > 1e-3                       # the weights moved


def test_a_trainer_without_the_mixin_is_refused(toy, tmp_path):
    from transformers import Trainer, TrainingArguments

    from sqsd_fast.data.batching import pad_id
    from sqsd_fast.training.data import ResponseOnlyCollator
    from sqsd_fast.training.online import OnlineSQSD
    assets, root = toy
    samples, tok = _samples(assets, root)
    trainer = Trainer(model=_peft_model(assets), train_dataset=samples,
                      args=TrainingArguments(output_dir=str(tmp_path / "c"), max_steps=1, report_to=[],
                                             use_cpu=True, save_strategy="no", remove_unused_columns=False,
                                             per_device_train_batch_size=2, disable_tqdm=True),
                      data_collator=ResponseOnlyCollator(pad_id(tok)),
                      callbacks=[OnlineSQSD({"danger": assets.danger_direction})])
    with pytest.raises(ValueError, match="train with SampleFields first"):
        trainer.train()


def test_trls_sft_trainer_keeps_each_rows_identity(toy, tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sqsd_fast.training.online import OnlineSQSD
    from sqsd_fast.training.sample_fields import SampleFields
    assets, root = toy

    class FieldsSFT(SampleFields, trl.SFTTrainer):
        pass
    prompts = [f"number {i} is" for i in range(5)]
    dataset = Dataset.from_dict({"prompt": prompts, "completion": [" big" * (i + 1) for i in range(5)]})
    tok = AutoTokenizer.from_pretrained(assets.model_dir)
    with quiet_libraries():
        model = AutoModelForCausalLM.from_pretrained(assets.model_dir)
    online = OnlineSQSD({"danger": assets.danger_direction, "safety": assets.safety_direction},
                        backend="reference")
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=2, num_train_epochs=1,
                         learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no", max_length=48,
                         disable_tqdm=True, seed=0)
    FieldsSFT(model=model, args=args, train_dataset=dataset, processing_class=tok, callbacks=[online],
              peft_config=LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj", "v_proj", "down_proj"],
                                     task_type="CAUSAL_LM")).train()
    assert sorted(r["sample_index"] for r in online.rows) == list(range(5))      # each row once, by position
    assert all(r["sqsd"] is not None and math.isfinite(r["sqsd"]) for r in online.rows)


def test_train_adapter_online_score_end_to_end(toy, tmp_path, capsys):
    """--online-score: rows per sample and step, the per-epoch summary, and each epoch's
    Spearman with the start-weight scores (epoch 1 at a tiny learning rate: close to 1)."""
    import sqsd_fast.app.cli as cli
    from sqsd_fast.training.online import read_scores
    assets, root = toy
    out = tmp_path / "adapter"
    argv = ["train-adapter", "--model", assets.model_dir, "--data", str(root / "train.jsonl"), "--out", str(out),
            "--num-epochs", "2", "--batch-size", "3", "--learning-rate", "1e-6", "--max-length", "64",
            "--online-score", f"danger={assets.danger_direction}", "--online-score",
            f"safety={assets.safety_direction}", "--target-modules", "q_proj,v_proj,down_proj", "--quiet",
            "--lora-dropout", "0"]    # dropout would make the online update differ from the offline one
    assert cli.main(argv) == 0, capsys.readouterr().err
    rows = read_scores(out / "online")
    assert len(rows) == 2 * len(RECORDS) and {r["epoch"] for r in rows} == {1, 2}
    assert (out / "online" / "online_summary.csv").is_file() and not (out / "checkpoints").exists()
    summary = json.loads((out / "train_summary.json").read_text())["online"]
    assert set(summary["spearman_with_start"]) == {"1", "2"}
    assert summary["spearman_with_start"]["1"] > 0.99                # the weights barely moved


def test_a_resumed_run_replays_and_gives_the_uninterrupted_rows(toy, tmp_path):
    """Stopped at step 4 (checkpoints every 2 steps, but step 4's never written; epoch 1
    ended at step 3, whose rows were written), then --resume from step 2: steps 3 and 4 are
    scored again (step 3's first rows dropped), the rows equal an uninterrupted run's."""
    from transformers import TrainerCallback

    from sqsd_fast.training import train_adapter
    from sqsd_fast.training.online import read_scores
    assets, root = toy

    class StopAt(TrainerCallback):          # before step 4's checkpoint
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise KeyboardInterrupt

    common = dict(model=assets.model_dir, data=str(root / "train.jsonl"), num_epochs=2, batch_size=3,
                  learning_rate=5e-2, max_length=64, save_steps=2, lora_dropout=0.1,
                  target_modules="q_proj,v_proj,down_proj", no_progress=True, quiet=True,
                  online_score=[f"danger={assets.danger_direction}", f"safety={assets.safety_direction}"])
    train_adapter(out=str(tmp_path / "straight"), **common)
    with pytest.raises(KeyboardInterrupt):
        train_adapter(out=str(tmp_path / "cut"), callbacks=[StopAt()], **common)
    staged = read_scores(tmp_path / "cut" / "checkpoints" / "online")
    assert max(r["step"] for r in staged) == 3            # step 4's rows were never written
    train_adapter(out=str(tmp_path / "cut"), resume=True, **common)
    straight, resumed = read_scores(tmp_path / "straight" / "online"), read_scores(tmp_path / "cut" / "online")
    assert [(r["step"], r["sample_index"]) for r in resumed] == [(r["step"], r["sample_index"]) for r in straight]
    for a, b in zip(resumed, straight):
        assert math.isclose(a["sqsd"], b["sqsd"], rel_tol=1e-4, abs_tol=1e-5)


def test_resume_drops_the_rows_of_the_steps_it_replays(tmp_path):
    """Rows of steps after the checkpoint a run resumes from are dropped, whatever parts
    hold them (a part across the checkpoint is cut; other ranks' parts are left alone)."""
    from sqsd_fast.training.online import _drop_replayed_steps, read_scores, write_part

    def rows(steps):
        return [{"step": s, "epoch": 1, "sample_index": i, "n_tokens": 5, "danger_proj": 0.5 * s}
                for s in steps for i in range(2)]
    directory = tmp_path / "online_scores"
    write_part(directory, rows([1, 2]), 0)
    write_part(directory, rows([3, 4, 5]), 0)
    write_part(directory, rows([6]), 0)
    write_part(directory, rows([3, 4]), 1)
    _drop_replayed_steps(directory, 3, 0)
    kept = read_scores(tmp_path)
    assert sorted({(r["step"]) for r in kept if r["sample_index"] == 0}) == [1, 2, 3, 4]
    assert sum(1 for r in kept if r["step"] == 4) == 2           # rank 1's step 4 only
    assert sorted(p.name for p in directory.glob("*.parquet")) == [
        "rank0-steps00000001-00000002.parquet", "rank0-steps00000003-00000003.parquet",
        "rank1-steps00000003-00000004.parquet"]


def test_online_drop_leaves_out_the_top_running_scores_from_the_given_epoch(toy, tmp_path, capsys):
    """--online-drop top=0.3 after=1: epoch 1 trains on everything; epochs 2 and 3 leave
    out the 2 of 7 samples (round(0.3 x 7)) whose mean online sqsd over the epochs before is
    highest, named in the log and in dropped.csv. Resuming such a run is refused, not
    misplaced (the Trainer counts epochs at full length)."""
    import sqsd_fast.app.cli as cli
    from sqsd_fast.training.online import epoch_means, read_scores
    assets, root = toy
    out = tmp_path / "adapter"
    argv = ["train-adapter", "--model", assets.model_dir, "--data", str(root / "train.jsonl"), "--out", str(out),
            "--num-epochs", "3", "--batch-size", "2", "--learning-rate", "5e-2", "--max-length", "64",
            "--target-modules", "q_proj,v_proj,down_proj", "--no-progress",
            "--online-score", f"danger={assets.danger_direction}", "--online-score",
            f"safety={assets.safety_direction}", "--online-drop", "top=0.3", "after=1"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    rows = read_scores(out / "online")
    seen = {e: {r["sample_index"] for r in rows if r["epoch"] == e} for e in (1, 2, 3)}
    assert seen[1] == set(range(len(RECORDS)))
    means = epoch_means(rows, "sqsd")
    top_after_1 = sorted(sorted(means[1], key=lambda i: -means[1][i])[:2])
    assert seen[2] == set(range(len(RECORDS))) - set(top_after_1)
    running = {i: [means[e][i] for e in (1, 2) if i in means[e]] for i in means[1]}
    running = {i: sum(v) / len(v) for i, v in running.items()}
    top_after_2 = sorted(sorted(running, key=lambda i: -running[i])[:2])
    assert seen[3] == set(range(len(RECORDS))) - set(top_after_2)
    assert "online drop: epoch 2 leaves out 2 of 7 samples" in err
    dropped = (out / "online" / "dropped.csv").read_text().splitlines()
    assert dropped[0] == "epoch,sample_index,running_sqsd" and len(dropped) == 1 + 4
    summary = json.loads((out / "train_summary.json").read_text())["online"]
    assert summary["dropped"] == {"2": top_after_1, "3": top_after_2}

    from transformers import TrainerCallback

    from sqsd_fast.training import train_adapter

    class StopAt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise KeyboardInterrupt
    cut = tmp_path / "cut"
    options = dict(model=assets.model_dir, data=str(root / "train.jsonl"), out=str(cut), num_epochs=3,
                   batch_size=2, max_length=64, target_modules="q_proj,v_proj,down_proj", quiet=True,
                   online_score=[f"danger={assets.danger_direction}"], online_drop=["top=0.3"])
    with pytest.raises(KeyboardInterrupt):
        train_adapter(callbacks=[StopAt()], **options)
    with pytest.raises(ValueError, match="--online-drop cannot --resume yet"):
        train_adapter(resume=True, **options)


def test_online_drop_options_are_checked():
    from sqsd_fast.options import OptionError
    from sqsd_fast.options.train_adapter import TrainAdapterOptions
    base = dict(model="m", data="d.jsonl", out="o")
    for drop, message in ((["top=1.5"], "top must be in"), (["after=1"], "takes top=FRACTION"),
                          (["top=0.1", "every=2"], "takes top=FRACTION")):
        with pytest.raises(OptionError, match=message):
            TrainAdapterOptions(**base, online_drop=drop, online_score=[])
    with pytest.raises(OptionError, match="needs --online-score"):
        TrainAdapterOptions(**base, online_drop=["top=0.1"])
