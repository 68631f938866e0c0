"""What a user installing the package meets: the version, `python -m sqsd_fast`, real models
by name, file errors that say "file", a finished run resumed without rescoring, quiet library
calls, and the license and typing marker shipped with the package."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sqsd_fast
import sqsd_fast.app.cli as cli
import sqsd_fast.app.pipeline as pipeline
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
    from sqsd_fast.models.quiet import quiet_libraries
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


# -- building and installing the distribution ------------------------------------------------

_INSTALLED_CHECK = """
import json, sys, torch, sqsd_fast
from sqsd_fast.ops.reference import factor_grad_stats_reference
info = sqsd_fast.build_info()
g = torch.Generator().manual_seed(0)
a = torch.randn(13, 5, generator=g)
b = torch.randn(7, 13, generator=g).t()                            # non-contiguous
cu = torch.tensor([0, 4, 4, 13])
dirs = torch.randn(2, 5, 7, generator=g)
proj, gram = sqsd_fast.factor_grad_stats(a, b, cu, dirs, gram="left", backend="cpp")
ref_proj, ref_gram = factor_grad_stats_reference(a, b, cu, dirs, gram="left")
close = lambda got, want: torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)
print(json.dumps({"file": sqsd_fast.__file__, "built": info["built"], "torch": info["torch_version"],
                  "agree": bool(close(proj, ref_proj) and close(gram, ref_gram))}))
"""


def _tracked_tree(dest: Path) -> Path:
    """A copy of the files a clean clone would have once committed (no build folder, no .so)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the distribution is built from the tracked files")
    for name in listed.stdout.decode().split("\0"):
        if name and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes((REPO / name).read_bytes())
    return dest


@pytest.mark.slow
def test_sdist_and_wheel_build_and_the_wheel_runs_from_a_fresh_venv(tmp_path):
    """python -m build (sdist, then the wheel from that sdist), the wheel into a new venv."""
    import importlib.metadata
    import sysconfig
    import zipfile

    import torch

    src = _tracked_tree(tmp_path / "src")
    dist = tmp_path / "dist"
    # --no-isolation: this venv already holds the pinned build requirements; the isolated
    # build (pip install .) is the same backend with torch==2.13.0 fetched into a temporary env.
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sdist, = dist.glob("sqsd_fast-*.tar.gz")
    wheel, = dist.glob("sqsd_fast-*.whl")
    import tarfile
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"CMakeLists.txt", "csrc/ops.cpp", "LICENSE", "sqsd_fast/anchors/danger_advbench_100.jsonl"} <= names

    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"sqsd_fast-{sqsd_fast.__version__}.dist-info/METADATA").decode()
        library, = [n for n in archive.namelist() if n.startswith("sqsd_fast/_C") and n.endswith(".so")]
        (tmp_path / "_C.so").write_bytes(archive.read(library))
    release = torch.__version__.split("+")[0]
    major, minor = release.split(".")[:2]
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: torch")]
    assert requires == [f"Requires-Dist: torch<{major}.{int(minor) + 1},>={release}"], requires
    assert "License-Expression: Apache-2.0" in metadata
    dynamic = subprocess.run(["readelf", "-d", str(tmp_path / "_C.so")], capture_output=True, text=True)
    if dynamic.returncode == 0:
        assert "RPATH" not in dynamic.stdout and "RUNPATH" not in dynamic.stdout, dynamic.stdout

    # A new venv gets the wheel alone; its dependencies are lent from this one by a .pth line
    # (listed after the venv's own site-packages, so the installed sqsd_fast is the one found;
    # the .pth files of the lent folder, this checkout's editable install among them, are not run).
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    fresh_python = fresh / "bin" / "python"
    site = subprocess.run([str(fresh_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "lent_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(fresh_python), "install", "--quiet",
                           "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    done = subprocess.run([str(fresh / "bin" / "sqsd-fast"), "--version"], cwd=outside, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"sqsd-fast {sqsd_fast.__version__}", done.stderr
    done = subprocess.run([str(fresh_python), "-c", _INSTALLED_CHECK], cwd=outside, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["file"].startswith(site) and report["built"] and report["agree"], report
    assert report["torch"] == torch.__version__.split("+")[0] or report["torch"] == torch.__version__
    assert importlib.metadata.version("sqsd_fast") == sqsd_fast.__version__
