"""DriftMonitor and train-adapter --monitor-direction: the drift of the LoRA update along
directions while training, checked against dense float64 matrices.

The unit tests drive the callback by hand on a small PeftModel with odd shapes; the others
train a tiny random Llama for a few optimizer steps on the CPU through train_adapter.
"""
import csv
import json
import math
import warnings

import pytest
import torch
from torch import nn

import sqsd_fast.app.cli as cli
from sqsd_fast.models.adapters import LoraFactors, read_adapter
from sqsd_fast.testing.toy_model import (TOY_CORPUS, TOY_REFUSAL_TEXTS, TOY_UNSAFE_TEXTS,
                                         build_toy_adapter, build_toy_model,
                                         build_toy_tokenizer)
from sqsd_fast.training import TrainAdapterOptions, format_summary, train_adapter
from sqsd_fast.training.drift import DriftMonitor, DriftWarning

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft 0.21 on transformers 5

# 8 samples, batch 2, one epoch: 4 optimizer steps. r and alpha are the init adapter's.
FAST = dict(r=4, lora_alpha=8, batch_size=2, num_epochs=1, learning_rate=2e-2,
            max_length=64, quiet=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)      # tiny matrices: more threads only slow a busy machine
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- dense reference


def dense_drift(now, start, scaling, directions):
    """proj, cos and ||U|| from dense float64 matrices: U_m = s_m (B A - B0 A0),
    D_m = s_d,m B_d A_d. ``now``/``start``: {module: LoraFactors}; ``scaling``: {module: s};
    ``directions``: {name: ({module: LoraFactors}, {module: s_d})}."""
    U = {m: scaling[m] * (now[m].B.double() @ now[m].A.double()
                          - start[m].B.double() @ start[m].A.double()) for m in now}
    norm = math.sqrt(sum(u.square().sum().item() for u in U.values()))
    out = {"update_norm": norm}
    for name, (factors, s_d) in directions.items():
        D = {m: s_d[m] * (f.B.double() @ f.A.double()) for m, f in factors.items()}
        dot = sum((U[m] * D[m]).sum().item() for m in U)
        d_norm = math.sqrt(sum(d.square().sum().item() for d in D.values()))
        out[f"{name}_proj"] = dot / d_norm
        out[f"{name}_cos"] = dot / (norm * d_norm) if norm > 0 else 0.0
    return out


def assert_rows_close(got, expected, rel=1e-9):
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=rel, abs=1e-12), key
        assert value != 0.0, f"{key} is zero: the check would be empty"


# ------------------------------------------------------------------- unit level


class Odd(nn.Module):
    """Three linear layers of odd shapes (7 -> 5 -> 11 -> 3)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(7, 5), nn.Linear(5, 11), nn.Linear(11, 3)

    def forward(self, x):
        return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(x)))))


def _odd_peft(seed, **lora):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    model = get_peft_model(Odd(), LoraConfig(target_modules=["l1", "l2", "l3"], **lora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p))       # B != 0: a continued (init) adapter
    return model


def _live(model, adapter="default"):
    from sqsd_fast.models.adapters import state_factors, state_modules
    factors = {n: LoraFactors(f.A.detach().clone(), f.B.detach().clone())
               for n, f in state_factors(model, adapter).items()}
    scaling = {n: float(m.scaling[adapter]) for n, m in state_modules(model, adapter).items()}
    return factors, scaling


def _fake_trainer_state(step=0):
    from transformers import TrainerControl, TrainerState
    state = TrainerState()
    state.global_step, state.epoch = step, step / 10
    return state, TrainerControl()


@pytest.fixture
def odd(tmp_path):
    """A trained LoRA (r 3, per-module alpha) started from random factors, a direction
    adapter directory of another rank and scalings, and one in-memory direction."""
    trained = _odd_peft(0, r=3, lora_alpha=7, alpha_pattern={"l3": 2})
    direction = _odd_peft(1, r=2, lora_alpha=5, alpha_pattern={"l2": 9})
    direction.save_pretrained(tmp_path / "danger")
    gen = torch.Generator().manual_seed(2)
    memory = {n: LoraFactors(torch.randn(4, f.A.shape[1], generator=gen),
                             torch.randn(f.B.shape[0], 4, generator=gen))
              for n, f in _live(trained)[0].items()}
    d_factors, d_scaling = _live(direction)      # peft's own per-module scalings
    reference = {"danger": (d_factors, d_scaling), "memory": (memory, dict.fromkeys(memory, 1.0))}
    return dict(trained=trained, danger=str(tmp_path / "danger"), memory=memory,
                reference=reference, root=tmp_path)


def _train_a_bit(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))


def test_monitor_equals_dense_computation(odd):
    model = odd["trained"]
    monitor = DriftMonitor({"danger": odd["danger"], "memory": odd["memory"]}, every_n_steps=5,
                           csv_path=odd["root"] / "d.csv")
    start, scaling = _live(model)
    assert len(set(scaling.values())) == 2           # per-module scaling of the trained LoRA
    state, control = _fake_trainer_state(0)
    monitor.on_train_begin(None, state, control, model=model)
    zero = monitor.measure()                         # U = 0: norm 0, cosine 0 by definition
    assert zero["update_norm"] == 0.0 and zero["danger_cos"] == zero["memory_cos"] == 0.0

    _train_a_bit(model, 3)
    for step in (4, 5):
        state.global_step, state.epoch = step, step / 10
        monitor.on_step_end(None, state, control, model=model)
    assert [row["step"] for row in monitor.history] == [5]        # every 5 steps only
    expected = dense_drift(_live(model)[0], start, scaling, odd["reference"])
    assert_rows_close(monitor.history[0], expected)
    logged = state.log_history[-1]
    assert logged["step"] == 5 and logged["drift/danger_proj"] == monitor.history[0]["danger_proj"]
    assert set(logged) == {"step", "epoch", "drift/update_norm", "drift/danger_proj",
                           "drift/danger_cos", "drift/memory_proj", "drift/memory_cos"}
    with open(odd["root"] / "d.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(rows[0][k]) for k in expected] == [monitor.history[0][k] for k in expected]


def test_small_update_on_a_large_start_is_accurate(odd):
    """||U|| comes from the differences, not from B A and B0 A0 cancelling: a 1e-9 update
    of O(1) factors still has its norm to many digits."""
    model = odd["trained"]
    monitor = DriftMonitor({"danger": odd["danger"]})
    start, scaling = _live(model)
    state, control = _fake_trainer_state(0)
    monitor.on_train_begin(None, state, control, model=model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.data = p.data.double()
                p.add_(1e-9 * torch.randn_like(p))
    expected = dense_drift(_live(model)[0], start, scaling, {"danger": odd["reference"]["danger"]})
    assert_rows_close(monitor.measure(), expected, rel=1e-6)


def test_resumed_monitor_reads_the_start_back(odd):
    model, start_path = odd["trained"], odd["root"] / "start.safetensors"
    csv_path = odd["root"] / "drift.csv"
    start, scaling = _live(model)
    first = DriftMonitor({"danger": odd["danger"]}, every_n_steps=1, csv_path=csv_path,
                         start_path=start_path)
    state, control = _fake_trainer_state(0)
    first.on_train_begin(None, state, control, model=model)
    for step in (1, 2, 3):
        _train_a_bit(model, step)
        state.global_step = step
        first.on_step_end(None, state, control, model=model)
    # resumed from a checkpoint at step 2: the rows after it go, the start stays the run's
    second = DriftMonitor({"danger": odd["danger"]}, every_n_steps=1, csv_path=csv_path,
                          start_path=start_path)
    state, control = _fake_trainer_state(2)
    second.on_train_begin(None, state, control, model=model)
    assert [row["step"] for row in second.history] == [1, 2]
    assert second.history == first.history[:2]
    expected = dense_drift(_live(model)[0], start, scaling, {"danger": odd["reference"]["danger"]})
    assert_rows_close(second.measure(), expected)
    # without its start file, a resumed monitor says it measures from the resume
    third = DriftMonitor({"danger": odd["danger"]})
    with pytest.warns(DriftWarning, match="resumed at step 2 without its start factors"):
        third.on_train_begin(None, state, control, model=model)
    assert third.measure()["update_norm"] == 0.0


def test_bad_arguments_name_the_argument(odd):
    good = {"danger": odd["danger"]}
    cases = [
        (dict(directions={}), "directions must be a non-empty mapping"),
        (dict(directions={"a,b": odd["danger"]}), "name 'a,b'"),
        (dict(directions={"d": str(odd["root"] / "missing")}),
         "d: adapter directory .* does not exist"),
        (dict(directions={"d": 3}), "d: expected an adapter directory"),
        (dict(every_n_steps=0), "every_n_steps must be a positive integer"),
        (dict(threshold={"safety": 0.5}), "threshold: 'safety' is not a monitored direction"),
        (dict(threshold={"danger": float("nan")}), "threshold: danger must be a finite number"),
        (dict(on_threshold="halt"), "on_threshold must be 'warn' or 'stop'"),
        (dict(on_threshold="stop"), "on_threshold='stop' needs a threshold"),
        (dict(csv_path=3), "csv_path must be a file path"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            DriftMonitor(**{"directions": good, **kwargs})


def test_direction_for_other_modules_is_refused(odd):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    partial = get_peft_model(Odd(), LoraConfig(r=2, target_modules=["l1", "l2"]))
    with torch.no_grad():
        for name, p in partial.named_parameters():
            if "lora_B" in name:
                p.normal_()
    partial.save_pretrained(odd["root"] / "partial")
    monitor = DriftMonitor({"partial": str(odd["root"] / "partial")})
    state, control = _fake_trainer_state(0)
    with pytest.raises(ValueError, match="direction partial.*lacks: l3"):
        monitor.on_train_begin(None, state, control, model=odd["trained"])


# ---------------------------------------------------------- with the real Trainer


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    tok = build_toy_tokenizer()
    model = build_toy_model(tok)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rows = [{"instruction": TOY_CORPUS[i], "response": TOY_CORPUS[i + 1]}
            for i in range(1, 17, 2)]
    data = root / "data.json"
    data.write_text(json.dumps(rows))
    # Directions of other ranks and scalings than the trained LoRA (r 4, alpha 8), and an
    # init adapter, so that B0 A0 != 0.
    danger = build_toy_adapter(model, tok, TOY_UNSAFE_TEXTS, root / "danger", r=2, alpha=6, seed=1)
    safety = build_toy_adapter(model, tok, TOY_REFUSAL_TEXTS, root / "safety", r=3, alpha=3,
                               seed=2)
    init = build_toy_adapter(model, tok, TOY_CORPUS[:6], root / "init", r=4, alpha=8, seed=3)
    return dict(root=root, model=str(model_dir), data=str(data), danger=danger, safety=safety,
                init=init)


def _common(toy, **extra):
    return dict(model=toy["model"], data=toy["data"], init_adapter=toy["init"], **{
        **FAST, "monitor_direction": [f"danger={toy['danger']}", f"safety={toy['safety']}"],
        "monitor_steps": 1, **extra})


def _expected_final(toy, out):
    """The dense drift of the saved adapter from the init adapter (the run's start)."""
    def config(path):
        with open(f"{path}/adapter_config.json") as f:
            return json.load(f)
    trained = read_adapter(out)
    s = config(out)["lora_alpha"] / config(out)["r"]
    directions = {}
    for name in ("danger", "safety"):
        c = config(toy[name])
        factors = read_adapter(toy[name])
        directions[name] = (factors, dict.fromkeys(factors, c["lora_alpha"] / c["r"]))
    return dense_drift(trained, read_adapter(toy["init"]), dict.fromkeys(trained, s), directions)


def _csv_rows(path):
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def LogGrabber():
    from transformers import TrainerCallback

    class _Grab(TrainerCallback):
        log_history: list = []

        def on_train_end(self, args, state, control, **kwargs):
            self.log_history = list(state.log_history)
    return _Grab()


@pytest.fixture(scope="module")
def monitored(toy):
    """One monitored run: 4 steps; the danger threshold is reached at once (warn), the
    safety one never."""
    out, grab = toy["root"] / "monitored", LogGrabber()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_adapter(out=str(out), callbacks=[grab],
                               **_common(toy, monitor_threshold=["danger=-1e6", "safety=1e6"]))
    drift_warnings = [w for w in caught if issubclass(w.category, DriftWarning)]
    return dict(result=result, out=out, log_history=grab.log_history, warnings=drift_warnings)


def test_trainer_run_logs_every_step(toy, monitored):
    result, out = monitored["result"], monitored["out"]
    assert result.global_step == 4
    rows = _csv_rows(out / "drift.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert list(rows[0]) == ["step", "epoch", "update_norm", "danger_proj", "danger_cos",
                             "safety_proj", "safety_cos"]
    logged = [e for e in monitored["log_history"] if "drift/danger_proj" in e]
    assert [e["step"] for e in logged] == [1, 2, 3, 4]
    assert [e["drift/safety_cos"] for e in logged] == [r["safety_cos"] for r in rows]
    assert (out / "drift.png").read_bytes().startswith(b"\x89PNG")
    assert not (out / "checkpoints").exists()           # the drift files moved out of it
    # the last measurement is the saved adapter's update from the init adapter
    assert_rows_close(rows[-1], _expected_final(toy, out))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["drift"]["final"] == result.drift["final"] == {**rows[-1], "step": 4}
    assert summary["drift"]["csv"] == str(out / "drift.csv")
    assert "drift at step 4" in format_summary(result)


def test_threshold_warns_once(monitored):
    assert len(monitored["warnings"]) == 1, [str(w.message) for w in monitored["warnings"]]
    assert "danger_proj" in str(monitored["warnings"][0].message)
    assert "at step 1" in str(monitored["warnings"][0].message)
    assert monitored["result"].drift["triggered"] == {"danger": 1}
    assert monitored["result"].drift["stopped_at"] is None


def test_threshold_stop_ends_training_early(toy):
    out = toy["root"] / "stopped"
    with pytest.warns(DriftWarning, match="stopping training"):
        result = train_adapter(out=str(out), **_common(
            toy, monitor_threshold=["danger=-1e6"], monitor_action="stop", monitor_steps=2))
    assert result.global_step == 2 < 4
    assert result.drift["stopped_at"] == 2 and result.drift["triggered"] == {"danger": 2}
    assert [r["step"] for r in _csv_rows(out / "drift.csv")] == [2]
    assert read_adapter(out)                               # the adapter is saved as it was
    assert "training stopped there" in format_summary(result)


def StopAtStep(n):
    from transformers import TrainerCallback

    class _Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == n:
                raise KeyboardInterrupt
    return _Stop()


def test_resume_measures_from_the_runs_start(toy, monitored):
    """Interrupted after step 3 (its row written) with a checkpoint at step 2: the resumed
    run keeps rows 1-2, measures 3-4 again, and from the init adapter, not checkpoint-2;
    the same as the uninterrupted monitored run."""
    common = _common(toy, save_steps=2, monitor_threshold=["danger=1e6"], monitor_action="stop")
    out = toy["root"] / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train_adapter(out=str(out), callbacks=[StopAtStep(3)], **common)
    work = out / "checkpoints"
    assert (work / "drift_start.safetensors").is_file() and (work / "checkpoint-2").is_dir()
    assert [r["step"] for r in _csv_rows(work / "drift.csv")] == [1, 2, 3]
    assert not (out / "drift.csv").exists()            # OUT holds only resumable files
    # the stop rule decides where training ends: a resume must keep it
    with pytest.raises(ValueError, match="monitor_stop differs"):
        train_adapter(out=str(out), resume=True,
                      **{**common, "monitor_threshold": ["danger=1e7"]})

    resumed = train_adapter(out=str(out), resume=True, **common)
    assert resumed.resumed_from is not None and resumed.global_step == 4
    rows, straight = _csv_rows(out / "drift.csv"), _csv_rows(monitored["out"] / "drift.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for got, expected in zip(rows, straight):
        for key in expected:
            assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-9), key
    assert_rows_close(rows[-1], _expected_final(toy, out))


def test_monitoring_added_at_resume_still_starts_at_the_init_adapter(toy):
    common = _common(toy, save_steps=2)
    out = toy["root"] / "added_later"
    unmonitored = {**common, "monitor_direction": []}
    with pytest.raises(KeyboardInterrupt):
        train_adapter(out=str(out), callbacks=[StopAtStep(3)], **unmonitored)
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    train_adapter(out=str(out), resume=True, **common)
    rows = _csv_rows(out / "drift.csv")
    assert [r["step"] for r in rows] == [3, 4]
    assert_rows_close(rows[-1], _expected_final(toy, out))


def test_direction_for_another_base_model_is_refused_before_loading(toy, tmp_path):
    tok = build_toy_tokenizer()
    other = build_toy_model(tok, hidden_size=32, intermediate_size=64)
    wrong = build_toy_adapter(other, tok, TOY_UNSAFE_TEXTS, tmp_path / "wrong", r=2, alpha=4)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--monitor-direction wrong: .*different base model"):
        train_adapter(out=str(out), **_common(toy, monitor_direction=[f"wrong={wrong}"]))
    assert not out.exists()


# ------------------------------------------------------------------------- CLI


def _base_argv(toy, out):
    return ["train-adapter", "--model", toy["model"], "--data", toy["data"], "--out", str(out)]


@pytest.mark.parametrize("extra, message", [
    (["--monitor-direction", "danger"], "--monitor-direction 'danger': expected NAME=DIR"),
    (["--monitor-direction", "a=x", "a=y"], "--monitor-direction: the name 'a' is given twice"),
    (["--monitor-direction", "d={root}/missing"], "--monitor-direction d=.*does not exist"),
    (["--monitor-direction", "d={root}"], "--monitor-direction d=.*no adapter_config.json"),
    (["--monitor-direction", "d={danger}", "--monitor-threshold", "safety=0.5"],
     "--monitor-threshold safety: not a monitored direction"),
    (["--monitor-direction", "d={danger}", "--monitor-threshold", "d=big"],
     "--monitor-threshold d=big: the value must be a finite number"),
    (["--monitor-direction", "d={danger}", "--monitor-action", "stop"],
     "--monitor-action stop needs --monitor-threshold"),
    (["--monitor-direction", "d={danger}", "--monitor-action", "halt"],
     "--monitor-action: invalid choice"),
])
def test_cli_usage_errors(toy, capsys, extra, message):
    import re
    out = toy["root"] / "cli_never"
    extra = [e.format(root=toy["root"], danger=toy["danger"]) for e in extra]
    assert cli.main(_base_argv(toy, out) + extra) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("sqsd-fast train-adapter: error:")
    assert not out.exists()


def test_cli_parses_repeated_directions_and_shows_help(toy, capsys):
    parser = cli.build_parser()
    options = cli.parse_options(parser, _base_argv(toy, "o") + [
        "--monitor-direction", f"danger={toy['danger']}",
        "--monitor-direction", f"safety={toy['safety']}", "--monitor-threshold", "danger=0.5",
        "--monitor-steps", "3", "--monitor-action", "stop"])
    assert options.monitor_directions() == {"danger": toy["danger"], "safety": toy["safety"]}
    assert options.monitor_thresholds() == {"danger": 0.5}
    assert (options.monitor_steps, options.monitor_action) == (3, "stop")
    assert TrainAdapterOptions(model="m", data="d", out="o").monitor_direction == []
    assert cli.main(["train-adapter", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--monitor-direction NAME=DIR", "--monitor-steps N",
                 "--monitor-threshold NAME=VALUE", "--monitor-action"):
        assert flag in text
