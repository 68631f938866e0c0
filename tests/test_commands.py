"""sqsd_fast.app.commands: one table of commands that the CLI, the pipeline and Python share."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

import sqsd_fast
import sqsd_fast.app.cli as cli
import sqsd_fast.app.pipeline as pipeline
from sqsd_fast.app.commands import COMMANDS, command, run_command
from sqsd_fast.io.writers import read_rows
from sqsd_fast.options import FilterOptions
from sqsd_fast.testing.fake_scorer import FakeScorer, make_workspace, score_args


def test_the_cli_offers_exactly_the_registered_commands():
    parser = cli.build_parser()
    assert set(parser.command_parsers) == set(COMMANDS)
    for name, entry in COMMANDS.items():
        cls = entry.options_class()
        assert cls.COMMAND == name and dataclasses.is_dataclass(cls) and entry.help, name
        assert callable(entry.runner()) and callable(entry.summarizer()), name


def test_a_command_loads_only_its_own_options():
    # train-adapter's options are transformers' TrainingArguments (seconds to import): a
    # scoring run parses its arguments without them, and train-adapter's parser has them.
    check = ("import sys; from sqsd_fast.app.cli import build_parser, parse_options; "
             "p = build_parser('filter'); o = parse_options(p, ['filter', '--scores', 's.csv', '--data', "
             "'d.jsonl', '--out', 'k.jsonl', '--drop-top', '1']); "
             "print(o.COMMAND, 'transformers.training_args' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["filter", "False"]
    assert set(cli.build_parser("train-adapter").command_parsers) == {"train-adapter"}


def test_an_unknown_command_is_an_error_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown command 'scroe'; known: score, project, baseline"):
        command("scroe")
    with pytest.raises(TypeError, match="either an options object or a command name"):
        run_command(FilterOptions(scores="s.csv", data="d.jsonl", out="k.jsonl", drop_top="1"), drop_top="2")


def test_python_runs_a_command_as_the_cli_does(tmp_path, monkeypatch, capsys):
    ws = make_workspace(tmp_path)
    monkeypatch.setattr(pipeline, "load_scorer", lambda options: FakeScorer())
    scores = tmp_path / "scores.jsonl"
    assert cli.main(score_args(ws, scores, "--quiet")) == 0
    by_cli, by_python = tmp_path / "cli.jsonl", tmp_path / "python.jsonl"
    assert cli.main(["filter", "--scores", str(scores), "--data", str(ws["data"]), "--drop-top", "2",
                     "--out", str(by_cli)]) == 0
    printed = capsys.readouterr().out
    result = sqsd_fast.run_command("filter", scores=str(scores), data=str(ws["data"]), drop_top="2",
                                   out=str(by_python))
    assert capsys.readouterr().out == ""                       # Python: no printing
    assert read_rows(by_python) == read_rows(by_cli) and result.n_dropped == 2
    assert COMMANDS["filter"].summarizer()(result).replace(str(by_python), str(by_cli)) == printed.rstrip("\n")

