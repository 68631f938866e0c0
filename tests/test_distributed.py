"""Runs on several processes: the shards, the launch checks, resume, and torchrun itself.

Most tests run the ranks of one run as threads of this process (:class:`ThreadWorld`
stands in for ``torch.distributed`` and the real pipeline runs on each thread, with the
contract-shaped FakeScorer), so the logic of a multi-process run is tested in
milliseconds. The last tests start real ``torchrun`` processes (gloo, CPU) on a tiny toy
model and compare their output with a one-process run.
"""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

import sqsd_fast.app.cli as cli
import sqsd_fast.app.distributed as distributed
import sqsd_fast.app.pipeline as pipeline
from sqsd_fast.models.quiet import quiet_libraries
from sqsd_fast.io.checkpoint import rank_part, sidecar_parts, sidecar_paths
from sqsd_fast.io.writers import read_rows
from sqsd_fast.options import ScoreOptions
from sqsd_fast.testing.fake_scorer import RECORDS, FakeScorer, make_workspace
from sqsd_fast.testing.kill_rank import kill_rank_hook

DATA = Path(__file__).resolve().parent / "data" / "dolly_like.jsonl"


# --------------------------------------------------------------------- the shards


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_shards_partition_the_samples_and_balance_their_tokens(size):
    costs = [(i * 37) % 101 + 1 for i in range(200)]
    shards = distributed.shard_positions(costs, size)
    assert sorted(i for s in shards for i in s) == list(range(len(costs)))   # each once
    assert all(s == sorted(s) for s in shards)
    loads = [sum(costs[i] for i in s) for s in shards]
    assert max(loads) - min(loads) <= max(costs)      # greedy, longest first: within one sample
    assert distributed.shard_positions(costs, size) == shards                 # deterministic


def test_shards_break_ties_by_index_and_leave_extra_ranks_empty():
    assert distributed.shard_positions([5, 5, 5, 5], 2) == [[0, 2], [1, 3]]
    assert distributed.shard_positions([1, 5, 2, 5], 2) == [[1, 2], [0, 3]]
    assert distributed.shard_positions([3], 3) == [[0], [], []]
    assert distributed.shard_positions([], 2) == [[], []]
    with pytest.raises(ValueError, match="at least 1"):
        distributed.shard_positions([1], 0)


def test_a_rank_takes_the_gpu_of_its_local_rank_and_refuses_a_fixed_one():
    world = distributed.World(rank=1, size=2, local_rank=1)
    assert distributed.rank_device("cpu", world) == "cpu"
    with pytest.raises(ValueError, match="--device cuda:1: with several processes each takes "
                                         "its own GPU"):
        distributed.rank_device("cuda:1", world)


def test_launch_is_read_from_the_launchers_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched()
    monkeypatch.setenv(distributed.ENV_SWITCH, "0")
    assert not distributed.launched()
    monkeypatch.delenv(distributed.ENV_SWITCH)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched()


# ------------------------------------------------------------ ranks on threads


class ThreadWorld(distributed.World):
    """A rank whose collectives meet the other threads' at a barrier; values are copied,
    as torch.distributed pickles them."""

    def __init__(self, rank, size, hub):
        super().__init__(rank=rank, size=size, local_rank=rank)
        self.hub = hub

    def all_gather(self, value):
        hub = self.hub
        hub.slots[self.rank] = copy.deepcopy(value)
        hub.barrier.wait()
        gathered = list(hub.slots)
        hub.barrier.wait()        # nobody overwrites a slot before every rank has read it
        return gathered


class CountingScorer(FakeScorer):
    """A FakeScorer that counts the rows it produced."""

    n_rows = 0

    def iter_score(self, *args, **kwargs):
        for rows in super().iter_score(*args, **kwargs):
            self.n_rows += len(rows)
            yield rows


class _Hub:
    def __init__(self, size):
        self.slots = [None] * size
        self.barrier = threading.Barrier(size, timeout=60)


@pytest.fixture
def ranks(monkeypatch):
    """``ranks(options_by_rank, scorers=None)``: one run on ``len(options_by_rank)`` ranks,
    each a thread; returns what each rank's ``pipeline.run`` returned or raised."""
    local = threading.local()

    @contextmanager
    def joined(device):
        yield local.world

    monkeypatch.setattr(distributed, "launched", lambda: hasattr(local, "world"))
    monkeypatch.setattr(distributed, "joined", joined)
    # Threads without a rank (a one-process reference run) get a fresh FakeScorer.
    monkeypatch.setattr(pipeline, "load_scorer",
                        lambda options: getattr(local, "scorer", None) or FakeScorer())

    def start(options_by_rank, scorers=None):
        size, hub = len(options_by_rank), _Hub(len(options_by_rank))
        outcomes = [None] * size

        def body(rank):
            local.world = ThreadWorld(rank, size, hub)
            local.scorer = scorers[rank] if scorers else FakeScorer()
            try:
                outcomes[rank] = pipeline.run(options_by_rank[rank])
            except Exception as exc:
                outcomes[rank] = exc

        threads = [threading.Thread(target=body, args=(r,)) for r in range(size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        return outcomes

    return start


@pytest.fixture
def ws(tmp_path):
    return make_workspace(tmp_path)


def _options(ws, out, **extra):
    return ScoreOptions(**{**dict(model=str(ws["model"]), danger_state=str(ws["danger_state"]),
                                  danger_direction=str(ws["danger_direction"]),
                                  safety_direction=str(ws["safety"]), data=str(ws["data"]),
                                  out=str(out), batch_size=2, max_length=64, quiet=True),
                           **extra})


def _one_process(ws, out, **extra):
    return pipeline.run(_options(ws, out, **extra)).rows


def _leftovers(out):
    return sorted(p.name for p in Path(out).parent.iterdir()
                  if p.name.startswith(Path(out).name + "."))


@pytest.mark.parametrize("size", [2, 3])
def test_ranks_write_the_rows_of_a_one_process_run(ws, tmp_path, ranks, monkeypatch, size):
    want = _one_process(ws, tmp_path / "one.jsonl")
    out = tmp_path / "many.jsonl"
    results = ranks([_options(ws, out)] * size)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert read_rows(out) == want and results[0].rows == want
    assert all(r.rows == [] and not r.is_main for r in results[1:])     # only rank 0 has rows
    assert [r.rank for r in results] == list(range(size)) and results[0].world_size == size
    assert _leftovers(out) == ["many.jsonl.meta.json"]                   # sidecars, locks gone
    record = json.loads((tmp_path / "many.jsonl.meta.json").read_text())
    assert record["n_rows"] == len(RECORDS)


def test_ranks_without_samples_write_nothing_and_wait(ws, tmp_path, ranks):
    out = tmp_path / "s.jsonl"
    results = ranks([_options(ws, out, limit=1)] * 3)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert [r["index"] for r in read_rows(out)] == [0] and results[0].rows[0]["rank"] == 1


def test_inconsistent_options_across_ranks_are_refused_on_every_rank(ws, tmp_path, ranks):
    out = tmp_path / "s.jsonl"
    results = ranks([_options(ws, out), _options(ws, out, metric="dot")])
    for rank, exc in enumerate(results):
        assert isinstance(exc, distributed.DistributedRunError), exc
        assert str(exc).startswith("inconsistent options across ranks: --metric is 'cosine' "
                                   "on rank 0 but 'dot' on rank 1"), exc
        assert exc.reported_elsewhere == (rank != 0)
    assert _leftovers(out) == []


def test_a_one_process_run_on_the_same_output_keeps_the_ranks_out(ws, tmp_path, ranks):
    from sqsd_fast.io.lock import output_lock
    out = tmp_path / "s.jsonl"
    with output_lock(out):
        results = ranks([_options(ws, out)] * 2)
    for exc in results:
        assert isinstance(exc, distributed.DistributedRunError), exc
        assert f"--out {out} is being written by another run (pid {os.getpid()}" in str(exc)
    assert not out.exists()


def test_different_data_on_one_rank_is_named(ws, tmp_path, ranks):
    other = tmp_path / "other" / "data.jsonl"
    other.parent.mkdir()
    other.write_text(ws["data"].read_text().replace("haiku", "poem"))
    out = tmp_path / "s.jsonl"
    results = ranks([_options(ws, out), _options(ws, out, data=str(other))])
    assert "--data is" in str(results[0]) and "on rank 1" in str(results[0])
    results = ranks([_options(ws, out), _options(ws, out)])     # a plain rerun works
    assert read_rows(out)


def test_a_failing_rank_stops_every_rank_and_a_resume_scores_only_the_rest(
        ws, tmp_path, ranks, monkeypatch, capsys):
    want = _one_process(ws, tmp_path / "one.jsonl")
    out = tmp_path / "s.jsonl"
    scorers = [FakeScorer(), FakeScorer(fail_after=1, error=RuntimeError)]
    results = ranks([_options(ws, out)] * 2, scorers)
    for exc in results:
        assert isinstance(exc, distributed.DistributedRunError), exc
        assert str(exc).startswith("rank 1 of 2: RuntimeError: simulated interruption"), exc
        assert str(exc).endswith("rerun the same command with --resume")
    assert sidecar_parts(out) == [rank_part(0, 2), rank_part(1, 2)] and not out.exists()
    saved = sum(sidecar_paths(out, p)[0].read_text().count("\n") for p in sidecar_parts(out))
    assert 2 <= saved < len(RECORDS)

    refused = ranks([_options(ws, out)] * 2)                     # no silent overwrite
    assert "found resume files from an earlier, unfinished run" in str(refused[0])

    capsys.readouterr()
    counting = [CountingScorer(), CountingScorer()]
    results = ranks([_options(ws, out, resume=True, quiet=False, no_progress=True)] * 2,
                    counting)
    assert results[0].n_resumed == saved and read_rows(out) == want
    assert sum(c.n_rows for c in counting) == len(RECORDS) - saved      # only what was missing
    assert all(c.n_rows for c in counting)            # and the ranks shared it
    assert f"resuming: {saved} of {len(RECORDS)} samples already scored" in capsys.readouterr().err
    assert _leftovers(out) == ["s.jsonl.meta.json"]


@pytest.mark.parametrize("then", [1, 3])
def test_a_run_on_one_world_size_resumes_on_another(ws, tmp_path, ranks, monkeypatch, then):
    want = _one_process(ws, tmp_path / "one.jsonl")
    out = tmp_path / "s.jsonl"
    ranks([_options(ws, out)] * 2, [FakeScorer(fail_after=1, error=RuntimeError)] * 2)
    assert len(sidecar_parts(out)) == 2
    if then == 1:   # a plain one-process resume takes the ranks' rows as its own
        result = pipeline.run(_options(ws, out, resume=True))
    else:
        result = ranks([_options(ws, out, resume=True)] * then)[0]
    assert read_rows(out) == want and result.n_resumed == 4
    assert sidecar_parts(out) == []


def test_an_output_directory_some_rank_does_not_share_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "SHARED_FILE_WAIT_S", 0.2)
    hub, outcomes = _Hub(2), [None, None]
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()     # the same path, seen from another machine

    def body(rank):
        try:
            distributed.check_shared_directory(ThreadWorld(rank, 2, hub),
                                               tmp_path / ("here" if rank == 0 else "elsewhere"))
        except ValueError as exc:
            outcomes[rank] = exc

    threads = [threading.Thread(target=body, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for exc in outcomes:
        assert str(exc).startswith(f"--out {tmp_path / 'here'} is not on a filesystem all "
                                   f"ranks share (rank 1 on "), exc
    assert list((tmp_path / "here").iterdir()) == []     # the check file is gone


def test_only_rank_0_prints_an_error_everyone_hit(ws, tmp_path, monkeypatch, capsys):
    def failing(options):
        raise distributed.DistributedRunError("boom", reported_elsewhere=True)

    monkeypatch.setattr(pipeline, "run", failing)
    argv = ["score", "--model", str(ws["model"]), "--danger-state", str(ws["danger_state"]),
            "--danger-direction", str(ws["danger_direction"]), "--safety-direction",
            str(ws["safety"]), "--data", str(ws["data"]), "--out", str(tmp_path / "s.jsonl")]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------- real torchrun


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from sqsd_fast.testing.toy_model import build_toy_assets
    root = tmp_path_factory.mktemp("dist_toy")
    with quiet_libraries():
        return build_toy_assets(root, hidden_size=32, intermediate_size=48, num_layers=1,
                                num_heads=2, r=2, alpha=4,
                                target_modules=("q_proj", "v_proj", "down_proj"))


def _toy_argv(toy, out, *extra):
    return ["score", "--model", toy.model_dir, "--danger-state", toy.danger_state,
            "--danger-direction", toy.danger_direction, "--safety-direction",
            toy.safety_direction, "--data", str(DATA), "--out", str(out), "--batch-size", "2",
            "--max-length", "128", "--no-progress", *extra]


@pytest.fixture(scope="module")
def one_process_rows(toy, tmp_path_factory):
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("dist_ref") / "scores.jsonl"
        assert cli.main(_toy_argv(toy, out, "--quiet")) == 0
    finally:
        torch.set_num_threads(threads)
    return read_rows(out)


def _torchrun(argv, *, nproc=2, env=None, timeout=240, script=None):
    """``torchrun ... sqsd-fast ARGV`` (or ``torchrun ... SCRIPT ARGV``) on one machine."""
    program = [str(script)] if script else ["--no-python",
                                            str(Path(sys.executable).parent / "sqsd-fast")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", *program, *argv]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(name, None)
    return subprocess.run(command, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def _assert_same_rows(rows, want):
    assert [r["index"] for r in rows] == [r["index"] for r in want]
    assert [r["rank"] for r in rows] == [r["rank"] for r in want]
    assert [r["status"] for r in rows] == [r["status"] for r in want]
    for key in ("danger_proj", "safety_proj", "sqsd"):
        for got, ref in zip(rows, want):
            if ref[key] is None:
                assert got[key] is None
            else:
                assert math.isclose(got[key], ref[key], rel_tol=0, abs_tol=1e-6), (key, got, ref)


@pytest.mark.slow
def test_torchrun_two_processes_write_the_one_process_rows(toy, one_process_rows, tmp_path):
    out = tmp_path / "scores.jsonl"
    proc = _torchrun(_toy_argv(toy, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_rows(read_rows(out), one_process_rows)
    assert proc.stdout.count("sqsd-fast score: ") == 1       # one summary, from rank 0
    assert _leftovers(out) == ["scores.jsonl.meta.json"]


@pytest.mark.slow
def test_torchrun_rank_killed_mid_run_then_resumed(toy, one_process_rows, tmp_path):
    # rank 1 dies when it asks for its second batch: its first is in its sidecar
    out = tmp_path / "scores.jsonl"
    proc = _torchrun(_toy_argv(toy, out), env=kill_rank_hook(tmp_path / "hook", rank=1, after=1))
    assert proc.returncode != 0 and not out.exists()
    saved = {p: sidecar_paths(out, p)[0].read_text().count("\n")     # complete rows
             for p in sidecar_parts(out)}
    assert saved.get(rank_part(1, 2)) == 2, (saved, proc.stderr[-3000:])

    proc = _torchrun(_toy_argv(toy, out, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming: {sum(saved.values())} of {len(one_process_rows)} samples already " \
           f"scored" in proc.stderr
    _assert_same_rows(read_rows(out), one_process_rows)
    assert sidecar_parts(out) == []


# The Python API inside a torch.distributed group its caller created (not plain gloo, as
# an nccl user's would not be): every rank calls score_file, which exchanges through a
# gloo group of its own; the caller's group must still be there afterwards.
PYTHON_API = """
import json, sys
from pathlib import Path
import torch.distributed as dist
from sqsd_fast.app.pipeline import score_file
dist.init_process_group("cpu:gloo,cuda:gloo")
result = score_file(**json.loads(sys.argv[1]))
report = {"rank": result.rank, "rows": result.rows, "group": dist.is_initialized()}
Path(sys.argv[2], f"rank{result.rank}.json").write_text(json.dumps(report))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_python_api_in_the_callers_group_with_a_rank_left_without_samples(toy, tmp_path):
    script = tmp_path / "api.py"
    script.write_text(PYTHON_API)
    out = tmp_path / "scores.jsonl"
    kwargs = dict(model=toy.model_dir, danger_state=toy.danger_state,
                  danger_direction=toy.danger_direction, safety_direction=toy.safety_direction,
                  data=str(DATA), out=str(out), max_length=128, limit=1, quiet=True)
    proc = _torchrun([json.dumps(kwargs), str(tmp_path)], script=script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # In files: the ranks' prints may interleave on their shared stdout.
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1] and all(r["group"] for r in reports)
    assert reports[0]["rows"] == read_rows(out) and len(reports[0]["rows"]) == 1
    assert reports[1]["rows"] == []
