"""Every bad input: non-zero exit, one clear line on stderr, no traceback, nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import sqsd_fast.app.cli as cli
import sqsd_fast.app.pipeline as pipeline
from sqsd_fast.testing.fake_scorer import FakeScorer, make_workspace, score_args


def _listing(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_scorer", lambda options: FakeScorer())
    return make_workspace(tmp_path)


def _fails(capsys, argv, match, root, code=1):
    before = _listing(root)
    assert cli.main(argv) == code
    captured = capsys.readouterr()
    err = captured.err
    assert match in err, err
    assert "Traceback" not in err
    if code == 1:
        assert err.startswith("sqsd-fast: error: ") and err.count("\n") == 1, err
    assert _listing(root) == before, "a failed run wrote or changed files"


def _with(argv, option, value):
    argv = list(argv)
    argv[argv.index(option) + 1] = value
    return argv


def test_data_problems(ws, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    base = score_args(ws, out)
    _fails(capsys, _with(base, "--data", str(tmp_path / "missing.jsonl")),
           "missing.jsonl: data file not found", tmp_path)
    (tmp_path / "d.txt").write_text("x")
    _fails(capsys, _with(base, "--data", str(tmp_path / "d.txt")),
           "unknown data file extension '.txt'", tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    _fails(capsys, _with(base, "--data", str(tmp_path / "bad.json")),
           "bad.json: not valid JSON", tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    _fails(capsys, _with(base, "--data", str(tmp_path / "empty.jsonl")),
           "empty.jsonl: the dataset is empty", tmp_path)
    (tmp_path / "nofield.jsonl").write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    _fails(capsys, _with(base, "--data", str(tmp_path / "nofield.jsonl")),
           "record 0: no 'instruction' field", tmp_path)
    _fails(capsys, base + ["--response-field", "answer"],
           "record 0: no response field ('answer'", tmp_path)


def test_output_problems(ws, tmp_path, capsys):
    _fails(capsys, score_args(ws, tmp_path / "s.txt"), "unsupported output extension '.txt'",
           tmp_path)
    _fails(capsys, score_args(ws, tmp_path / "s.json"), "unsupported output extension",
           tmp_path)
    _fails(capsys, score_args(ws, tmp_path / "nodir" / "s.csv"), "does not exist", tmp_path)
    (tmp_path / "dir.csv").mkdir()
    _fails(capsys, score_args(ws, tmp_path / "dir.csv"), "is a directory", tmp_path)
    data_csv = tmp_path / "data.csv"
    data_csv.write_text("instruction,response\nhi,there\n")
    _fails(capsys, _with(score_args(ws, data_csv), "--data", str(data_csv)),
           "is the input data file", tmp_path)


def test_model_and_adapter_problems(ws, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    _fails(capsys, _with(score_args(ws, out), "--danger-state", str(tmp_path / "nope")),
           "--danger-state", tmp_path)
    _fails(capsys, _with(score_args(ws, out), "--safety-direction", str(ws["model"])),
           "not a LoRA adapter directory", tmp_path)
    _fails(capsys, _with(score_args(ws, out), "--model", str(tmp_path / "nomodel")),
           "--model", tmp_path)
    _fails(capsys, _with(score_args(ws, out), "--model", str(ws["danger_state"])),
           "not a model directory (no config.json)", tmp_path)


def test_scorer_failure_is_one_line(ws, tmp_path, capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("adapter for another base model\nsecond line")
    monkeypatch.setattr(pipeline, "load_scorer", broken)
    _fails(capsys, score_args(ws, tmp_path / "s.jsonl"),
           "RuntimeError: adapter for another base model second line", tmp_path)


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--max-length", "-3"),
                                           ("--metric", "l2"), ("--dtype", "int8"),
                                           ("--device", "tpu"), ("--limit", "x")])
def test_bad_option_values_are_usage_errors(ws, tmp_path, capsys, option, value):
    argv = score_args(ws, tmp_path / "s.jsonl")
    argv = _with(argv, option, value) if option in argv else argv + [option, value]
    _fails(capsys, argv, option, tmp_path, code=2)


def test_missing_required_option_and_help(capsys):
    assert cli.main(["score", "--data", "x.jsonl"]) == 2
    assert "required" in capsys.readouterr().err
    assert cli.main([]) == 2
    capsys.readouterr()
    assert cli.main(["score", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--danger-direction" in text and "--resume" in text and "Example" in text


def test_subsets_problems(ws, tmp_path, capsys):
    scores = tmp_path / "scores.jsonl"
    rows = [{"index": i, "sqsd": float(i), "status": "ok"} for i in range(5)]
    scores.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out_dir = tmp_path / "subsets"
    base = ["subsets", "--scores", str(scores), "--data", str(ws["data"]),
            "--out-dir", str(out_dir)]
    _fails(capsys, _with(base, "--scores", str(tmp_path / "none.jsonl")),
           "none.jsonl: file not found", tmp_path)
    _fails(capsys, base + ["--window", "6"], "--window must be between 1 and", tmp_path)
    _fails(capsys, base + ["--column", "danger"], "no 'danger' column", tmp_path)
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"instruction": "a", "response": "b"}) + "\n")
    _fails(capsys, _with(base, "--data", str(short)), "refers to record 4", tmp_path)
    unscored = tmp_path / "unscored.jsonl"
    unscored.write_text(json.dumps({"index": 0, "sqsd": None, "status": "zero_update"}) + "\n")
    _fails(capsys, _with(base, "--scores", str(unscored)), "no scored rows", tmp_path)
    (tmp_path / "afile").write_text("")
    _fails(capsys, _with(base, "--out-dir", str(tmp_path / "afile")), "is a file", tmp_path)
    assert not out_dir.exists()
