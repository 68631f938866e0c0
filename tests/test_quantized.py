"""QLoRA bases: --load-in-4bit / --load-in-8bit load the base model's linear layers with
bitsandbytes (its CPU backend runs here), the LoRA factors stay float, and the scores are
exactly those of the quantized model: checked against the dense batch-1 reference run on
the same quantized model. Skipped where bitsandbytes is not installed."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

pytest.importorskip("bitsandbytes")

import sqsd_fast.app.cli as cli  # noqa: E402
from sqsd_fast.models.adapters import load_base_model  # noqa: E402
from sqsd_fast.scoring import SQSDScorer  # noqa: E402
from sqsd_fast.testing.dense_reference import authors_project  # noqa: E402
from sqsd_fast.testing.toy_model import build_toy_assets  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_toy_assets(tmp_path_factory.mktemp("toy"))


def _samples(n=5, seed=3):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 12 + 7 * i
        ids = torch.randint(8, 500, (length,), generator=generator).tolist()
        out.append({"index": i, "input_ids": ids, "labels": [-100] * (length // 3) + ids[length // 3:]})
    return out


def _quantized_peft(assets, kind):
    from peft import PeftModel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = load_base_model(assets.model_dir, quantization=kind)
        model = PeftModel.from_pretrained(base, assets.danger_state, adapter_name="danger_state")
        model.load_adapter(assets.danger_direction, adapter_name="danger")
    return model


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_scores_on_a_quantized_base_equal_the_dense_reference_on_it(assets, kind):
    import bitsandbytes as bnb
    model = _quantized_peft(assets, kind)
    base_layer = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(base_layer, bnb.nn.Linear4bit if kind == "4bit" else bnb.nn.Linear8bitLt)
    samples = _samples()
    expected = authors_project(model, [type("S", (), s) for s in samples], state="danger_state",
                               direction="danger").total("cosine")
    scorer = SQSDScorer.from_peft_model(model, danger_state="danger_state", danger_direction="danger",
                                        backend="reference")
    got = torch.tensor([r["proj"] for r in scorer.project(samples, batch_size=3, progress=False)], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-5)
    # the quantization is real: the float model's scores differ
    float_scores = SQSDScorer.from_pretrained(assets.model_dir, danger_state=assets.danger_state,
                                              danger_direction=assets.danger_direction, backend="reference")
    plain = torch.tensor([r["proj"] for r in float_scores.project(samples, progress=False)], dtype=torch.float64)
    assert (plain - got).abs().max() > 1e-4


def test_the_cli_option_loads_the_quantized_base_and_is_in_the_run_record(assets, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"say {w} twice", "response": f"{w} {w}, as asked."}) + "\n"
                            for w in ("tea", "rain", "bread", "snow")))
    out = tmp_path / "p.jsonl"
    argv = ["project", "--model", assets.model_dir, "--state", assets.danger_state, "--direction",
            assets.danger_direction, "--data", str(data), "--out", str(out), "--backend", "reference", "--quiet"]
    # in a fresh process, where bitsandbytes is first imported: its import notice is not shown
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "sqsd_fast", *argv, "--load-in-4bit"], capture_output=True, text=True)
    assert done.returncode == 0 and "kernels-community" not in done.stderr, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    record = json.loads((tmp_path / "p.jsonl.meta.json").read_text())
    assert record["fingerprint"]["load_in_4bit"] is True and "load_in_8bit" not in record["fingerprint"]
    from sqsd_fast.data import read_records
    from sqsd_fast.data.tokenize import load_tokenizer, tokenize_records
    samples = tokenize_records(read_records(str(data)), load_tokenizer(assets.model_dir))
    model = _quantized_peft(assets, "4bit")
    direct = SQSDScorer.from_peft_model(model, danger_state="danger_state", danger_direction="danger",
                                        backend="reference").project(samples, progress=False)
    assert [r["proj"] for r in rows] == pytest.approx([r["proj"] for r in direct], rel=1e-5)


def test_bad_quantization_requests_are_one_line_errors(assets, tmp_path, capsys, monkeypatch):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "a", "response": "b c"}) + "\n")
    base = ["project", "--state", assets.danger_state, "--direction", assets.danger_direction,
            "--data", str(data), "--out", str(tmp_path / "o.jsonl")]
    assert cli.main([*base, "--model", assets.model_dir, "--load-in-4bit", "--load-in-8bit"]) == 2
    assert "--load-in-8bit and --load-in-4bit: give one of them" in capsys.readouterr().err
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert cli.main([*base, "--model", str(gguf), "--load-in-4bit"]) == 2
    assert "de-quantized to float" in capsys.readouterr().err
    import builtins
    real_import = builtins.__import__

    def no_bitsandbytes(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_bitsandbytes)
    assert cli.main([*base, "--model", assets.model_dir, "--load-in-8bit"]) == 1
    err = capsys.readouterr().err
    assert "--load-in-8bit needs bitsandbytes" in err and "pip install" in err and len(err.strip().splitlines()) == 1


def test_anchor_direction_on_a_quantized_base(assets, tmp_path):
    from safetensors.torch import load_file
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text("".join(json.dumps({"instruction": f"explain {w}", "response": f"{w} is done like this."}) + "\n"
                               for w in ("locks", "fires", "fraud")))
    made = {}
    for flag in ("", "--load-in-4bit"):
        out = tmp_path / f"direction{flag or '-float'}"
        argv = ["anchor-direction", "--model", assets.model_dir, "--state", assets.danger_state,
                "--anchors", str(anchors), "--out", str(out), "--backend", "reference", "--quiet"]
        assert cli.main([*argv, *([flag] if flag else [])]) == 0
        made[flag] = load_file(str(out / "adapter_model.safetensors"))
    assert made[""].keys() == made["--load-in-4bit"].keys()
    assert any(not torch.allclose(made[""][k], made["--load-in-4bit"][k], atol=1e-6) for k in made[""])


def test_train_adapter_on_a_4bit_base_trains_the_lora_of_the_quantized_model(assets, tmp_path, capsys):
    """QLoRA: train-adapter --load-in-4bit trains float LoRA factors on the NF4 base. The loss
    falls, the adapter differs from the one trained on the float base (the base really was
    quantized), the option is in the run's summary, online scoring runs inside it, and the
    adapter scores on the quantized base."""
    from safetensors.torch import load_file

    from sqsd_fast.training import train_adapter
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"say {w} twice", "response": f"{w} {w}, as asked, {w}."})
                            + "\n" for w in ("tea", "rain", "bread", "snow", "salt", "moss", "iron", "wool")))
    settings = dict(model=assets.model_dir, data=str(data), r=4, lora_alpha=8, batch_size=4, num_epochs=3,
                    learning_rate=2e-2, max_length=64, quiet=True)
    quantized = train_adapter(out=str(tmp_path / "qlora"), load_in_4bit=True,
                              online_score=[f"danger={assets.danger_direction}"], **settings)
    plain = train_adapter(out=str(tmp_path / "lora"), **settings)
    assert quantized.epoch_losses[-1] < quantized.epoch_losses[0] - 0.05, quantized.epoch_losses
    assert quantized.epoch_losses != plain.epoch_losses
    assert quantized.online["rows_this_run"] == 8 * 3   # every sample scored at every step, on the 4-bit base
    trained_q = load_file(str(tmp_path / "qlora" / "adapter_model.safetensors"))
    trained_f = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    assert trained_q.keys() == trained_f.keys() and all(t.dtype == torch.float32 for t in trained_q.values())
    assert any(not torch.allclose(trained_q[k], trained_f[k], atol=1e-6) for k in trained_q)
    fingerprint = lambda out: json.loads((out / "train_summary.json").read_text())["options"]  # noqa: E731
    assert fingerprint(tmp_path / "qlora")["load_in_4bit"] is True
    out = tmp_path / "p.jsonl"
    assert cli.main(["project", "--model", assets.model_dir, "--state", str(tmp_path / "qlora"), "--direction",
                     assets.danger_direction, "--data", str(data), "--out", str(out), "--backend", "reference",
                     "--quiet", "--load-in-4bit"]) == 0
    assert all(json.loads(line)["status"] == "ok" for line in out.read_text().splitlines())


def test_train_adapter_on_a_quantized_base_refuses_merge_to(assets, tmp_path, capsys):
    argv = ["train-adapter", "--model", assets.model_dir, "--data", str(tmp_path / "d.jsonl"), "--out",
            str(tmp_path / "o"), "--load-in-4bit", "--merge-to", str(tmp_path / "m")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "merge-adapter" in err and "4 / 8-bit grid" in err


def test_importing_the_training_api_is_quiet():
    """Python users of the training API (train_adapter, the callbacks for their own Trainer)
    do not see bitsandbytes' notice about optional kernels, which transformers' Trainer
    import triggers where bitsandbytes is installed."""
    import subprocess
    import sys
    code = ("from sqsd_fast.training import train_adapter, DriftMonitor\n"
            "from sqsd_fast.training.online import OnlineSQSD\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "kernels" not in done.stderr, done.stderr
