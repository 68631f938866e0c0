"""What a user installing the package meets: the version, `python -m sqsd_fast`, real models
by name, file errors that say "file", a finished run resumed without rescoring, quiet library
calls, and the license and typing marker shipped with the package."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sqsd_fast
import sqsd_fast.cli as cli
import sqsd_fast.pipeline as pipeline
from sqsd_fast.testing.fake_scorer import FakeScorer, make_workspace, score_args

REPO = Path(__file__).resolve().parent.parent


def test_version_and_python_dash_m(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sqsd-fast {sqsd_fast.__version__}"
    done = subprocess.run([sys.executable, "-m", "sqsd_fast", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"sqsd-fast {sqsd_fast.__version__}"
    done = subprocess.run([sys.executable, "-m", "sqsd_fast", "nope"], capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_models_by_name_stand_for_their_cached_gguf(tmp_path, monkeypatch, capsys):
    from sqsd_fast.models import names
    from sqsd_fast.options import ProjectOptions
    fetched = []

    def fake_fetch(name, progress=True):
        fetched.append(name)
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(b"GGUF")
        return path
    monkeypatch.setattr(names, "fetch_by_name", fake_fetch)
    options = ProjectOptions(model="smollm2", direction="d", data="x.jsonl", out="o.jsonl")
    assert options.model == str(tmp_path / "smollm2.gguf") and fetched == ["smollm2"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gemma3-270m").mkdir()                 # a local directory of that name wins
    assert ProjectOptions(model="gemma3-270m", direction="d", data="x", out="o.jsonl").model == "gemma3-270m"
    assert cli.main(["fetch-model", "smollm2", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "smollm2.gguf")


def test_a_missing_gguf_is_a_missing_file(tmp_path, capsys):
    ws = make_workspace(tmp_path)
    argv = score_args(ws, tmp_path / "s.jsonl")
    argv[argv.index("--model") + 1] = str(tmp_path / "nope.gguf")
    assert cli.main(argv) == 1
    assert "nope.gguf: file not found" in capsys.readouterr().err


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_resume_of_a_finished_run_returns_it_without_rescoring(tmp_path, monkeypatch, ext):
    ws = make_workspace(tmp_path)
    loads = []
    monkeypatch.setattr(pipeline, "load_scorer", lambda options: loads.append(1) or FakeScorer())
    out = tmp_path / f"s{ext}"
    first = pipeline.score_file(model=str(ws["model"]), danger_state=str(ws["danger_state"]),
                                danger_direction=str(ws["danger_direction"]), safety_direction=str(ws["safety"]),
                                data=str(ws["data"]), out=str(out), batch_size=3, max_length=64, quiet=True)
    again = pipeline.score_file(**{**first.options.to_dict(), "resume": True})
    assert loads == [1] and again.rows == first.rows and again.n_resumed == len(first.rows)
    # another run's options (here: the metric) are scored, not taken from the file
    other = pipeline.score_file(**{**first.options.to_dict(), "resume": True, "metric": "dot"})
    assert loads == [1, 1] and other.rows != first.rows


def test_library_calls_are_quiet(tmp_path, capfd):
    from sqsd_fast.quiet import quiet_libraries
    from sqsd_fast.scoring import SQSDScorer
    from sqsd_fast.testing.toy_model import build_toy_assets
    with quiet_libraries():
        assets = build_toy_assets(tmp_path, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2)
    capfd.readouterr()
    SQSDScorer.from_pretrained(assets.model_dir, danger_state=assets.danger_state,
                               danger_direction=assets.danger_direction)
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err and "FutureWarning" not in captured.err, captured.err


def test_license_typing_marker_and_anchor_sets_are_package_data():
    from setuptools.config.pyprojecttoml import read_configuration
    config = read_configuration(REPO / "pyproject.toml")
    assert config["project"]["license"] == "Apache-2.0" and (REPO / "LICENSE").read_text().startswith("Apache License")
    data = config["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["sqsd_fast"] and (REPO / "sqsd_fast" / "py.typed").exists()
    assert "*.jsonl" in data["sqsd_fast.anchors"]
