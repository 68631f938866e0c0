"""Every benchmark script runs end to end in --smoke mode (tiny sizes, results in a tmp dir).

Numbers from smoke runs mean nothing; these tests check that the scripts, their
agreement checks and their CSV / report plumbing work.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sqsd_fast.testing.assertions import require_module

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"


def run_script(name: str, out_dir: Path, *extra: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, str(BENCH / name), "--smoke", "--device", "cpu", "--threads", "1",
         "--out-dir", str(out_dir), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, (f"{name} --smoke failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bench_kernels_smoke(tmp_path):
    proc = run_script("bench_kernels.py", tmp_path)
    out = rows(tmp_path / "bench_kernels.csv")
    assert {r["case"] for r in out} == {"lora_A", "lora_B", "full"}
    ref = [r for r in out if r["backend"] == "reference"]
    assert ref and all(r["status"] == "ok" and float(r["rel_err"]) <= 1e-5 for r in ref)
    assert all(r["mode"] == "smoke" and r["device"] and r["torch"] for r in out)
    assert "MISMATCH" not in proc.stdout


def test_bench_e2e_smoke(tmp_path):
    require_module("peft")
    proc = run_script("bench_e2e.py", tmp_path)
    out = rows(tmp_path / "bench_e2e.csv")
    methods = {(r["phase"], r["method"], r["backend"]) for r in out}
    assert ("final", "authors", "-") in methods and ("final", "engine", "reference") in methods
    assert ("final", "floor", "-") in methods
    assert any(m[:2] == ("final", "default") for m in methods)
    assert "MISMATCH" not in proc.stdout
    assert "goal: defaults" in proc.stdout


def test_bench_e2e_smoke_token_budgets(tmp_path):
    require_module("peft")
    proc = run_script("bench_e2e.py", tmp_path, "--max-tokens-list", "8,256,512", "--skip-reference")
    out = rows(tmp_path / "bench_e2e.csv")
    # 8 is below the longest sample: dropped from the sweep, not an error.
    assert {r["max_tokens"] for r in out if r["phase"] == "sweep"} == {"256", "512"}
    assert not any(r["backend"] == "reference" for r in out)
    assert "MISMATCH" not in proc.stdout


def test_bench_per_sample_smoke(tmp_path):
    require_module("peft")
    run_script("bench_per_sample.py", tmp_path)
    out = rows(tmp_path / "bench_per_sample.csv")
    by_method = {r["method"].split()[0]: r for r in out}
    assert by_method["torch.func"]["status"] == "ok"
    assert by_method["engine[reference]"]["status"] == "ok"
    check_opacus_row([r for r in out if r["method"].split()[0] == "opacus"])


def check_opacus_row(opacus_rows: list[dict]) -> None:
    """Opacus is measured where it is installed; elsewhere its row says it is not installed."""
    assert len(opacus_rows) == 1, f"expected one opacus row, got {opacus_rows}"
    row = opacus_rows[0]
    try:
        import opacus
    except ImportError:
        assert row["method"] == "opacus" and row["status"].startswith("opacus not installed"), row
        assert not row.get("time_ms"), row
    else:
        assert row["method"] == f"opacus {opacus.__version__}", row
        assert row["status"] == "ok" and float(row["time_ms"]) > 0, row
        assert float(row["rel_err"]) <= float(row["tol"]), row


@pytest.mark.slow
def test_bench_scaling_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    run_script("bench_scaling.py", tmp_path)
    out = rows(tmp_path / "bench_scaling.csv")
    assert {r["axis"] for r in out} == {"samples", "seq_len", "batch_size"}
    assert (tmp_path / "bench_scaling.png").stat().st_size > 0


@pytest.mark.slow
def test_bench_scaling_smoke_budgets_and_processes(tmp_path):
    """The token-budget axis, and the processes axis: `sqsd-fast score` under real torchrun."""
    require_module("peft")
    run_script("bench_scaling.py", tmp_path, "--max-tokens-list", "128", "--processes", "2",
               "--sample-counts", "", "--seq-lens", "", "--batch-sizes", "", timeout=300)
    out = rows(tmp_path / "bench_scaling.csv")
    assert {r["axis"] for r in out} == {"max_tokens", "processes"}
    procs = [r for r in out if r["axis"] == "processes"]
    assert [(r["value"], r["threads_per_process"]) for r in procs] == [("1", "1"), ("2", "1")]
    assert all(int(r["samples"]) == 4 and float(r["peak_MB"]) > 0 for r in procs)


def test_make_report_renders_from_csvs(tmp_path):
    """The report generator fills every generated block from CSVs (smoke rows are ignored)."""
    run_script("bench_kernels.py", tmp_path)
    # Mark the smoke rows as a full run so the generator has something to show.
    path = tmp_path / "bench_kernels.csv"
    data = rows(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(data[0]))
        writer.writeheader()
        for r in data:
            writer.writerow({**r, "mode": "full"})
    out = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run([sys.executable, str(BENCH / "make_report.py"), "--results", str(tmp_path),
                           "--doc", str(REPO / "BENCHMARKS.md"), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "| lora_A | reference |" in text
    assert "No full run recorded yet" in text  # the other scripts' blocks, no CSVs in tmp_path


def test_bench_influence_smoke(tmp_path):
    require_module("peft")
    run_script("bench_influence.py", tmp_path)
    out = rows(tmp_path / "bench_influence.csv")
    assert {r["method"] for r in out} >= {"less", "query", "sketch"}
    assert all(r["status"] == "ok" and r["mode"] == "smoke" for r in out)
    assert all(float(r["cos_abs_err"]) < 1e-3 for r in out if r["cos_abs_err"])


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("mode", ["whole passes", "paired by batch"])
def test_bench_influence_floor_smoke(tmp_path, mode):
    """The floor, query_scores, self_stats and sketch on 8 SmolLM2 samples, whole passes or
    back to back on each batch (bergson is a peer in its own venv, not run here)."""
    require_module("peft")
    from sqsd_fast.models import ModelFetchError, fetch_smollm2
    try:
        fetch_smollm2()
    except ModelFetchError as exc:
        pytest.skip(f"SmolLM2 GGUF cannot be fetched here: {exc}")
    out = tmp_path / "floor.jsonl"
    paired = ["--paired"] if mode == "paired by batch" else []
    proc = subprocess.run([sys.executable, str(BENCH / "bench_influence_floor.py"), "--smoke", "--out", str(out),
                           *paired], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["method"] for r in rows] == ["floor", "query", "self_stats", "sketch"]
    assert all(r["smoke"] and r["samples"] == 8 and r["seconds"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    assert rows[0]["x_floor"] == 1.0 and all(r["x_floor"] > 0 for r in rows)
    if paired:
        assert all(r["mode"] == mode and r["batches"] >= 1 for r in rows)
        assert all(r["x_floor_ci95"][0] <= r["x_floor"] <= r["x_floor_ci95"][1] for r in rows)


@pytest.mark.slow
def test_bench_large_data_smoke(tmp_path):
    out = tmp_path / "large.jsonl"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_large_data.py"), "--smoke", "--model", "fake",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["samples"] for r in rows] == [200, 400] and all(r["scored"] > 0 and r["mode"] == "smoke" for r in rows)
    assert all(0 < r["pipeline_own_share"] <= 1 and r["device"] and r["segments"] == 1 for r in rows)


@pytest.mark.slow
def test_bench_large_data_resumes_a_killed_size(tmp_path):
    """A size whose process is killed part-way (a session's end) is continued by the same
    command, and its row sums both processes' times."""
    import json
    out, work = tmp_path / "large.jsonl", tmp_path / "work"
    command = [sys.executable, str(BENCH / "bench_large_data.py"), "--model", "fake", "--sizes", "200",
               "--work-root", str(work), "--heartbeat", "0", "--out", str(out)]
    killed = subprocess.run(command + ["--kill-after", "3"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0 and "rerun to continue" in killed.stderr and not out.exists()
    (segment,) = [json.loads(p.read_text()) for p in (work / "fake-200" / "segments").glob("*.json")]
    assert segment["batches"] == 3 and not segment["finished"] and segment["wall_s"] > 0
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "continuing" in resumed.stdout
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["segments"] == 2 and row["scored"] == 200 and row["wall_s"] > segment["wall_s"]
    scores = [json.loads(line) for line in (work / "fake-200" / "scores.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in scores) == list(range(200))
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "finished earlier" in again.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[1]["wall_s"] == row["wall_s"] and rows[1]["segments"] == 2


@pytest.mark.slow
def test_bench_large_torchrun_resumes_a_killed_rank_to_the_one_process_rows(tmp_path):
    out = tmp_path / "torchrun.jsonl"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_large_torchrun.py"), "--samples", "120",
                           "--kill-after", "4", "--work", str(tmp_path / "work"), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["step"] for s in row["steps"]] == ["one process", "torchrun, rank 1 killed", "torchrun --resume"]
    assert 0 < row["steps"][2]["resumed"] < 120 and row["same_indices_in_order"] and row["same_ranks"]
    assert all(0 <= row[f"max_abs_diff_{k}"] <= 1e-5 for k in ("danger_proj", "safety_proj", "sqsd"))
