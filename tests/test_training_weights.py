"""Per-sample loss weights: the loss ``sum w_s loss_s / sum w_s`` against a float64 loop,
``train-adapter --weight-column`` end to end, and the mixin on TRL's SFTTrainer for real
(the weight survives TRL's dataset preparation and collator, aligned with its sample)."""
from __future__ import annotations

import json

import pytest
import torch

from sqsd_fast.models.quiet import quiet_libraries
from sqsd_fast.training.sample_fields import SAMPLE_INDEX, SAMPLE_WEIGHT
from sqsd_fast.training.weights import SampleWeightedLoss, read_weights, weighted_loss


def _reference(logits, labels, weights) -> float:
    """float64, one sample and one position at a time."""
    total, norm = 0.0, 0.0
    for s in range(logits.shape[0]):
        terms = []
        for t in range(1, labels.shape[1]):
            y = int(labels[s, t])
            if y != -100:
                row = logits[s, t - 1].double()
                terms.append(float(torch.logsumexp(row, 0) - row[y]))
        loss_s = sum(terms) / len(terms) if terms else 0.0
        total += float(weights[s]) * loss_s
        norm += float(weights[s])
    return total / norm


def test_weighted_loss_matches_a_float64_loop():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 4, 11, generator=g).transpose(0, 1)       # (4, 7, 11), not contiguous
    labels = torch.randint(0, 11, (4, 7), generator=g)
    labels[0, :3] = -100                                               # a prompt
    labels[2, :6] = -100                                               # one trained token
    labels[3, ::2] = -100                                              # holes
    weights = torch.tensor([0.5, 2.0, 0.0, 1.25])
    got = weighted_loss(logits, labels, weights)
    assert abs(float(got) - _reference(logits, labels, weights)) < 1e-5
    # the weights matter, and a scale of all of them does not
    assert abs(float(weighted_loss(logits, labels, torch.ones(4))) - float(got)) > 1e-3
    assert abs(float(weighted_loss(logits, labels, 3 * weights)) - float(got)) < 1e-6
    assert float(weighted_loss(logits, labels, torch.zeros(4))) == 0.0


def test_bad_weights_name_the_record():
    assert read_weights([{"w": 1}, {"w": "0.5"}], "w", "f") == [1.0, 0.5]
    for rows, message in (([{"w": 1}, {}], "record 1 has no 'w' field"),
                          ([{"w": "x"}], "record 0 has w = 'x', not a number"),
                          ([{"w": -1}], "weights must be finite and >= 0"),
                          ([{"w": float("nan")}], "weights must be finite"),
                          ([{"w": 0}, {"w": 0.0}], "every w is 0")):
        with pytest.raises(ValueError, match=message):
            read_weights(rows, "w", "f")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from sqsd_fast.testing.toy_model import build_toy_model, build_toy_tokenizer
    root = tmp_path_factory.mktemp("weights")
    tok = build_toy_tokenizer()
    with quiet_libraries():
        build_toy_model(tok, hidden_size=32, intermediate_size=48, num_layers=1,
                        num_heads=2).save_pretrained(root / "m")
    tok.save_pretrained(root / "m")
    return root


RECORDS = [{"instruction": f"say something about the number {i}", "response": "it is " + "big " * (i % 3 + 1)}
           for i in range(6)]


def _train(toy, tmp_path, name, weights, **extra):
    from sqsd_fast.models.adapters import read_adapter
    from sqsd_fast.training import train_adapter
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps({**r, "w": w}) + "\n" for r, w in zip(RECORDS, weights)))
    train_adapter(model=str(toy / "m"), data=str(data), out=str(tmp_path / name), weight_column="w",
                  num_epochs=1, batch_size=3, learning_rate=1e-2, max_length=48, no_progress=True,
                  quiet=True, **extra)
    return read_adapter(tmp_path / name)


def test_train_adapter_honours_the_weight_column(toy, tmp_path):
    base = _train(toy, tmp_path, "a", [1, 1, 0, 1, 2, 1])
    scaled = _train(toy, tmp_path, "b", [2, 2, 0, 2, 4, 2])            # the same loss: same adapter
    other = _train(toy, tmp_path, "c", [1, 1, 1, 1, 2, 1])             # a masked sample unmasked
    for name, f in base.items():
        torch.testing.assert_close(scaled[name].B, f.B, rtol=1e-5, atol=1e-7)
    assert any(float((other[n].B - f.B).abs().max()) > 1e-6 for n, f in base.items())
    summary = json.loads((tmp_path / "a" / "train_summary.json").read_text())
    assert summary["options"]["weight_column"] == "w"
    with pytest.raises(ValueError, match="record 0 has w = -1.0"):
        _train(toy, tmp_path, "d", [-1, 1, 1, 1, 1, 1])
    assert not (tmp_path / "d" / "adapter_model.safetensors").exists()


def test_the_mixin_on_trls_sft_trainer(toy, tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = []

    class Recording(SampleWeightedLoss, trl.SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            with torch.no_grad():      # the same weights, before this step's update
                logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            seen.append((inputs["input_ids"].clone(), inputs[SAMPLE_WEIGHT].clone(), float(loss.detach()),
                         _reference(logits, inputs["labels"], inputs[SAMPLE_WEIGHT]), inputs[SAMPLE_INDEX].clone()))
            return loss

    prompts = [f"number {i} is" for i in range(6)]
    completions = [" " + "big " * (i + 1) for i in range(6)]
    weights = [0.5 + i for i in range(6)]                   # each weight names its sample
    dataset = Dataset.from_dict({"prompt": prompts, "completion": completions, "sample_weight": weights})
    tok = AutoTokenizer.from_pretrained(toy / "m")
    with quiet_libraries():
        model = AutoModelForCausalLM.from_pretrained(toy / "m")
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=3, max_steps=2,
                         learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                         logging_steps=1, max_length=48, disable_tqdm=True, seed=0)
    trainer = Recording(model=model, args=args, train_dataset=dataset, processing_class=tok,
                        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               task_type="CAUSAL_LM"))
    trainer.train()
    assert len(seen) == 2
    by_prompt = {tuple(tok(p)["input_ids"]): w for p, w in zip(prompts, weights)}
    for ids, w, loss, expected, index in seen:
        for row, weight, i in zip(ids.tolist(), w.tolist(), index.tolist()):
            start = next(key for key in by_prompt if tuple(row[:len(key)]) == key)
            assert by_prompt[start] == pytest.approx(weight)            # the weight stayed with its sample
            assert weights[i] == pytest.approx(weight)                  # and so did its index
        assert loss == pytest.approx(expected, rel=1e-5)
