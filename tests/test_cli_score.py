"""`sqsd-fast score` / `project` with a stand-in scorer: outputs, summary, kill + resume.

The stand-in (sqsd_fast.testing.fake_scorer.FakeScorer) follows the SQSDScorer contract
but computes cheap deterministic numbers from the token ids, so these tests check the
run's own logic (ordering, ranks, formats, resume) in milliseconds.
test_cli_end_to_end.py runs the real scorer on a toy model.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

import sqsd_fast.app.cli as cli
import sqsd_fast.app.pipeline as pipeline
from sqsd_fast.io.checkpoint import sidecar_paths
from sqsd_fast.io.writers import read_rows
from sqsd_fast.testing.fake_scorer import RECORDS, FakeScorer, make_workspace, score_args

@pytest.fixture
def ws(tmp_path):
    return make_workspace(tmp_path)


def use_scorer(monkeypatch, scorer):
    monkeypatch.setattr(pipeline, "load_scorer", lambda options: scorer)
    return scorer


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_score_writes_rows_in_input_order_with_ranks(ws, tmp_path, monkeypatch, capsys, ext):
    use_scorer(monkeypatch, FakeScorer())
    out = tmp_path / f"scores{ext}"
    assert cli.main(score_args(ws, out)) == 0
    rows = read_rows(out)
    assert list(rows[0]) == ["index", "danger_proj", "safety_proj", "sqsd", "rank", "n_tokens",
                             "n_response_tokens", "status"]
    assert [int(r["index"]) for r in rows] == list(range(len(RECORDS)))
    statuses = [r["status"] for r in rows]
    assert statuses[6] == "no_response_tokens"          # its prompt alone exceeds 64 tokens
    assert statuses.count("ok") == len(RECORDS) - 1
    assert rows[6]["sqsd"] is None and rows[6]["rank"] is None
    scored = [r for r in rows if r["status"] == "ok"]
    by_rank = sorted(scored, key=lambda r: int(r["rank"]))
    assert [int(r["rank"]) for r in by_rank] == list(range(1, len(scored) + 1))
    values = [float(r["sqsd"]) for r in by_rank]
    assert values == sorted(values, reverse=True)
    assert not any(p.exists() for p in sidecar_paths(out))
    text = capsys.readouterr().out
    assert "no_response_tokens 1" in text and "truncated to --max-length 64: 1" in text
    assert "highest sqsd" in text and "lowest sqsd" in text and "median" in text


def test_project_command(ws, tmp_path, monkeypatch):
    use_scorer(monkeypatch, FakeScorer())
    out = tmp_path / "proj.csv"
    args = ["project", "--model", str(ws["model"]), "--state", str(ws["danger_state"]),
            "--direction", str(ws["danger_direction"]), "--data", str(ws["data"]),
            "--out", str(out), "--max-length", "64", "--quiet"]
    assert cli.main(args) == 0
    rows = read_rows(out)
    assert list(rows[0]) == ["index", "proj", "n_tokens", "n_response_tokens", "status"]
    assert [int(r["index"]) for r in rows] == list(range(len(RECORDS)))


def test_limit_scores_only_the_first_records(ws, tmp_path, monkeypatch):
    use_scorer(monkeypatch, FakeScorer())
    out = tmp_path / "s.jsonl"
    assert cli.main(score_args(ws, out, "--limit", "4", "--quiet")) == 0
    assert [r["index"] for r in read_rows(out)] == [0, 1, 2, 3]


@pytest.mark.parametrize("error, code", [(KeyboardInterrupt, 130), (RuntimeError, 1)])
def test_interrupted_then_resumed_equals_uninterrupted(ws, tmp_path, monkeypatch, capsys,
                                                      error, code):
    full = tmp_path / "full.jsonl"
    use_scorer(monkeypatch, FakeScorer())
    assert cli.main(score_args(ws, full, "--quiet")) == 0

    out = tmp_path / "resumed.jsonl"
    use_scorer(monkeypatch, FakeScorer(fail_after=2, error=error))
    assert cli.main(score_args(ws, out, "--quiet")) == code
    assert not out.exists()
    partial, manifest = sidecar_paths(out)
    saved = [json.loads(x)["index"] for x in partial.read_text().splitlines()]
    assert len(saved) == 6 and manifest.exists()          # two batches of three
    assert "--resume" in capsys.readouterr().err

    # Without --resume the sidecars are not silently overwritten.
    assert cli.main(score_args(ws, out, "--quiet")) == 1
    assert "use --resume" in capsys.readouterr().err.replace("rerun with --resume", "use --resume")

    resumed = use_scorer(monkeypatch, FakeScorer())
    assert cli.main(score_args(ws, out, "--quiet", "--resume")) == 0
    assert not set(resumed.scored) & set(saved)
    assert len(resumed.scored) + len(saved) == len(full.read_text().splitlines())
    assert out.read_bytes() == full.read_bytes()
    assert not partial.exists() and not manifest.exists()


def test_resume_with_different_options_is_refused(ws, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.csv"
    use_scorer(monkeypatch, FakeScorer(fail_after=1))
    assert cli.main(score_args(ws, out, "--quiet")) == 130
    capsys.readouterr()
    before = sorted(p.name for p in tmp_path.iterdir())
    partial, _ = sidecar_paths(out)
    saved = partial.read_bytes()
    use_scorer(monkeypatch, FakeScorer())
    for extra in (["--metric", "dot"], ["--max-length", "32"], ["--limit", "5"],
                  ["--dtype", "bfloat16"], ["--safety-state-scaling", "0.5"]):
        args = score_args(ws, out, "--quiet", "--resume")
        args[args.index("--max-length"):args.index("--max-length") + 2] = []
        args += extra if extra[0] == "--max-length" else ["--max-length", "64", *extra]
        assert cli.main(args) == 1, extra
        err = capsys.readouterr().err
        assert "cannot resume" in err and extra[0].lstrip("-").replace("-", "_") in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    ws["data"].write_text(ws["data"].read_text() + json.dumps(RECORDS[0]) + "\n")
    assert cli.main(score_args(ws, out, "--quiet", "--resume")) == 1
    assert "data.digest" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and partial.read_bytes() == saved


def test_resume_when_everything_is_done_skips_the_model(ws, tmp_path, monkeypatch):
    out = tmp_path / "s.jsonl"
    use_scorer(monkeypatch, FakeScorer(fail_after=1))
    assert cli.main(score_args(ws, out, "--quiet")) == 130
    partial, _ = sidecar_paths(out)
    rows = [json.dumps({"index": i, "danger_proj": 0.5, "safety_proj": 0.25, "sqsd": 0.25,
                        "n_tokens": 9, "n_response_tokens": 3, "status": "ok"})
            for i in range(len(RECORDS))]
    partial.write_text("\n".join(rows) + "\n")       # as if every batch had completed

    def no_model(args):
        raise AssertionError("model loaded although every row was saved")
    monkeypatch.setattr(pipeline, "load_scorer", no_model)
    assert cli.main(score_args(ws, out, "--quiet", "--resume")) == 0
    assert [r["rank"] for r in read_rows(out)] == list(range(1, len(RECORDS) + 1))


KILL_SCRIPT = """
import sys
import sqsd_fast.app.cli as cli
import sqsd_fast.app.pipeline as pipeline
from sqsd_fast.testing.fake_scorer import FakeScorer
pipeline.load_scorer = lambda options: FakeScorer(sleep_after_first=60)
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")
def test_process_killed_after_first_batch_then_resumed(ws, tmp_path, monkeypatch):
    full = tmp_path / "full.parquet"
    use_scorer(monkeypatch, FakeScorer())
    assert cli.main(score_args(ws, full, "--quiet")) == 0

    out = tmp_path / "killed.parquet"
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), *score_args(ws, out, "--quiet")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial, manifest = sidecar_paths(out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and manifest.exists()
    assert partial.read_text().count("\n") == 3

    use_scorer(monkeypatch, FakeScorer())
    assert cli.main(score_args(ws, out, "--quiet", "--resume")) == 0
    import pyarrow.parquet as pq
    assert pq.read_table(out).equals(pq.read_table(full))
    assert not partial.exists()


def test_rows_from_resume_keep_missing_values(ws, tmp_path, monkeypatch):
    out = tmp_path / "s.jsonl"
    use_scorer(monkeypatch, FakeScorer(fail_after=2))
    cli.main(score_args(ws, out, "--quiet"))
    use_scorer(monkeypatch, FakeScorer())
    assert cli.main(score_args(ws, out, "--quiet", "--resume")) == 0
    rows = read_rows(out)
    assert rows[6]["status"] == "no_response_tokens" and rows[6]["danger_proj"] is None
    assert all(math.isfinite(r["sqsd"]) for r in rows if r["status"] == "ok")
