"""The run pipeline from Python: score_file with resume, options, fingerprint, ranking."""
from __future__ import annotations

import json

import dataclasses

import pytest

import sqsd_fast.app.pipeline as pipeline
from sqsd_fast.app.cli import build_parser
from sqsd_fast.data.records import looks_like_local_path
from sqsd_fast.io.checkpoint import sidecar_paths
from sqsd_fast.io.writers import read_rows
from sqsd_fast.options.evaluate import EvaluateOptions
from sqsd_fast.options import BaselineOptions
from sqsd_fast.options import OptionError, ProjectOptions, ScoreOptions, SubsetsOptions
from sqsd_fast.options.train_adapter import TrainAdapterOptions
from sqsd_fast.io.ranking import add_ranks, sort_scored
from sqsd_fast.testing.fake_scorer import RECORDS, FakeScorer, make_workspace


@pytest.fixture
def ws(tmp_path):
    return make_workspace(tmp_path)


def _score_kwargs(ws, out, **extra):
    return dict(model=str(ws["model"]), danger_state=str(ws["danger_state"]),
                danger_direction=str(ws["danger_direction"]),
                safety_direction=str(ws["safety"]), data=str(ws["data"]), out=str(out),
                batch_size=3, max_length=64, quiet=True, **extra)


def test_score_file_from_python_resumes_after_an_interruption(ws, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_scorer", lambda options: FakeScorer())
    full = pipeline.score_file(**_score_kwargs(ws, tmp_path / "full.jsonl"))
    assert [r["index"] for r in full.rows] == list(range(len(RECORDS)))
    ranks = sorted(r["rank"] for r in full.rows if r["rank"] is not None)
    assert ranks == list(range(1, len(ranks) + 1)) and full.n_resumed == 0
    assert read_rows(tmp_path / "full.jsonl") == full.rows

    out = tmp_path / "part.jsonl"
    monkeypatch.setattr(pipeline, "load_scorer", lambda options: FakeScorer(fail_after=2))
    with pytest.raises(KeyboardInterrupt):
        pipeline.score_file(**_score_kwargs(ws, out))
    partial, _ = sidecar_paths(out)
    assert partial.read_text().count("\n") == 6            # two completed batches of three
    with pytest.raises(ValueError, match="resume"):        # no silent overwrite
        pipeline.score_file(**_score_kwargs(ws, out))
    saved = {json.loads(line)["index"] for line in partial.read_text().splitlines()}
    second = FakeScorer()
    monkeypatch.setattr(pipeline, "load_scorer", lambda options: second)
    resumed = pipeline.score_file(ScoreOptions(**_score_kwargs(ws, out, resume=True)))
    assert resumed.n_resumed == 6 and sorted(second.scored) == sorted(set(range(len(RECORDS))) - saved)
    assert out.read_bytes() == (tmp_path / "full.jsonl").read_bytes()
    assert not partial.exists()


def test_project_file_from_python(ws, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_scorer", lambda options: FakeScorer())
    result = pipeline.project_file(model=str(ws["model"]), state=str(ws["danger_state"]),
                                   direction=str(ws["danger_direction"]), data=str(ws["data"]),
                                   out=str(tmp_path / "p.csv"), max_length=64, quiet=True)
    assert result.column == "proj" and "rank" not in result.rows[0]
    assert [int(r["index"]) for r in read_rows(tmp_path / "p.csv")] == list(range(len(RECORDS)))


@pytest.mark.parametrize("cls", [ScoreOptions, ProjectOptions])
def test_every_option_is_in_the_fingerprint_unless_it_cannot_change_a_score(ws, tmp_path, cls):
    names = {f.name for f in dataclasses.fields(cls)}
    assert cls.NOT_FINGERPRINTED <= names, cls.NOT_FINGERPRINTED - names
    assert set(cls.ADAPTER_FIELDS) <= names
    if cls is ScoreOptions:
        options = ScoreOptions(**_score_kwargs(ws, tmp_path / "s.jsonl"))
    else:
        options = ProjectOptions(model=str(ws["model"]), state=str(ws["danger_state"]),
                                 direction=str(ws["danger_direction"]), data=str(ws["data"]),
                                 out=str(tmp_path / "p.jsonl"))
    fp = pipeline.fingerprint(options, pipeline.prepare(options))
    # anchor_files: the digest of every anchor set a direction is built from, shipped ones too;
    # options added later count only when set (earlier runs keep their fingerprints)
    unset_later = cls.FINGERPRINTED_WHEN_SET
    assert set(fp) == (names - cls.NOT_FINGERPRINTED - unset_later) | {"command", "n_samples", "anchor_files"}
    set_one = dataclasses.replace(options, load_in_4bit=True)
    assert pipeline.fingerprint(set_one, pipeline.prepare(options))["load_in_4bit"] is True
    for name in cls.ADAPTER_FIELDS + ("model", "data"):   # by content, not by name
        if getattr(options, name) is not None:
            assert fp[name]["digest"], name


@pytest.mark.parametrize("cls", [ScoreOptions, ProjectOptions, SubsetsOptions, BaselineOptions,
                                 TrainAdapterOptions, EvaluateOptions])
def test_the_parser_has_one_option_per_field(cls):
    parser = build_parser().command_parsers[cls.COMMAND]
    flags = {s for action in parser._actions for s in action.option_strings}
    hidden = getattr(cls, "CLI_HIDDEN", frozenset())   # train-adapter: most TrainingArguments
    dests = {action.dest for action in parser._actions}
    for f in dataclasses.fields(cls):
        if f.name in hidden:
            assert f.name not in dests, f.name
        else:
            assert "--" + f.name.replace("_", "-") in flags, f.name


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("max_length", True),
                                          ("metric", "l2"), ("dtype", "int8"),
                                          ("device", "tpu"), ("limit", -1),
                                          ("safety_state_scaling", float("nan"))])
def test_bad_option_values_name_the_option(ws, tmp_path, field, value):
    with pytest.raises(OptionError, match=field) as info:
        ScoreOptions(**{**_score_kwargs(ws, tmp_path / "s.jsonl"), field: value})
    assert info.value.option == field


def test_ranking_orders_by_score_then_index_and_skips_unscored():
    rows = [{"index": 0, "sqsd": 0.5, "status": "ok"},
            {"index": 1, "sqsd": None, "status": "zero_update"},
            {"index": 2, "sqsd": 0.9, "status": "ok"},
            {"index": 3, "sqsd": 0.5, "status": "ok"},
            {"index": 4, "sqsd": float("nan"), "status": "ok"},
            {"index": 5, "sqsd": 0.7, "status": "non_finite_gradient"}]
    assert [r["index"] for r in sort_scored(rows, "sqsd")] == [2, 0, 3]
    add_ranks(rows, "sqsd")
    assert [r["rank"] for r in rows] == [2, None, 1, 3, None, None]


@pytest.mark.parametrize("name, local", [("gpt2", False), ("Qwen/Qwen3-8B", False),
                                         ("meta-llama/Llama-3.1-8B", False),
                                         ("a/b/c", True), ("./model", True),
                                         ("~/adapters/x", True), ("missing.jsonl", True),
                                         ("SmolLM2-135M-Instruct.Q4_1.gguf", True)])
def test_one_rule_tells_local_paths_from_hub_ids(name, local):
    assert looks_like_local_path(name) is local


@pytest.mark.parametrize("method", ["length", "random"])
def test_baseline_command_runs_through_the_pipeline(ws, tmp_path, method):
    from sqsd_fast.app import cli
    out = tmp_path / "b.jsonl"
    argv = ["baseline", "--method", method, "--model", str(ws["model"]), "--data", str(ws["data"]),
            "--out", str(out), "--max-length", "64", "--batch-size", "3", "--quiet"]
    assert cli.main(argv) == 0
    rows = read_rows(out)
    assert list(rows[0]) == ["index", "score", "rank", "n_tokens", "n_response_tokens", "status"]
    assert [r["index"] for r in rows] == list(range(len(RECORDS)))
    scored = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["rank"] for r in scored) == list(range(1, len(scored) + 1))
    if method == "length":
        assert all(r["score"] == r["n_response_tokens"] for r in scored)
    again = tmp_path / "again.jsonl"
    assert cli.main([a if a != str(out) else str(again) for a in argv]) == 0
    assert read_rows(again) == rows          # seeded: the same scores on a rerun


def test_token_budget_batches_the_run_and_a_too_small_one_is_refused_before_loading(
        ws, tmp_path, monkeypatch):
    seen = []

    class Recording(FakeScorer):
        def _batches(self, samples, batch_size, skip_indices, max_tokens=None):
            for batch in super()._batches(samples, batch_size, skip_indices, max_tokens):
                seen.append((len(batch), max(s.n_tokens for s in batch)))
                yield batch

    monkeypatch.setattr(pipeline, "load_scorer", lambda options: Recording())
    plain = pipeline.score_file(**_score_kwargs(ws, tmp_path / "plain.jsonl"))
    prep = pipeline.prepare(ScoreOptions(**_score_kwargs(ws, tmp_path / "x.jsonl")))
    longest = max(s.n_tokens for s in prep.samples)
    seen.clear()
    budget = pipeline.score_file(**{**_score_kwargs(ws, tmp_path / "budget.jsonl"),
                                    "batch_size": 64, "max_tokens": longest * 2})
    assert all(n * width <= longest * 2 for n, width in seen) and max(n for n, _ in seen) > 1
    assert [r["sqsd"] for r in budget.rows] == [r["sqsd"] for r in plain.rows]

    def no_loading(options):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(pipeline, "load_scorer", no_loading)
    with pytest.raises(ValueError, match=rf"--max-tokens {longest - 1} is smaller than sample "
                                         rf"\d+ \({longest} tokens\); use --max-tokens {longest}"):
        pipeline.score_file(**_score_kwargs(ws, tmp_path / "small.jsonl", max_tokens=longest - 1))


def test_default_token_budget_on_a_cpu_never_refuses_a_sample():
    from sqsd_fast.data.tokenize import TokenizedSample
    from sqsd_fast.engine.token_budget import CPU_MAX_TOKENS, resolve_max_tokens

    def make_samples(lengths):
        return [TokenizedSample(i, [3] * n, [-100] + [3] * (n - 1), False, n, n - 1)
                for i, n in enumerate(lengths)]
    short, long = make_samples([5, 9]), make_samples([CPU_MAX_TOKENS + 50])
    assert resolve_max_tokens(None, None, "cpu", short) == CPU_MAX_TOKENS
    assert resolve_max_tokens(None, None, "cpu", long) == CPU_MAX_TOKENS + 50
    assert resolve_max_tokens(77, None, "cpu", long) == 77        # a given budget is kept
