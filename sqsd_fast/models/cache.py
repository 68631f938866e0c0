"""The user cache directory, content hashes and directories that appear whole or not at all.

Converted models and downloaded files live under one root: ``cache_dir`` if given, else
``$SQSD_FAST_CACHE``, else ``~/.cache/sqsd_fast``. Every entry is built in a temporary
directory beside its final place and renamed into it, so a reader (or a crash, or a
Ctrl-C) never sees half an entry: the entry exists complete or it does not exist.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from sqsd_fast.io.atomic import current_umask, fsync_dir

CACHE_ENV = "SQSD_FAST_CACHE"
DEFAULT_CACHE = "~/.cache/sqsd_fast"
TEMP_PREFIX = ".tmp-"
# A temporary directory this old belongs to a run that was killed (SIGKILL, power loss):
# no conversion or download takes a day, so it is safe to delete.
STALE_AFTER_S = 24 * 3600
_HASH_CHUNK = 8 << 20
_HASH_BAR_FROM = 512 << 20  # hashing is ~1 GB/s: below this size a bar would only flicker


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$SQSD_FAST_CACHE``, else ``~/.cache/sqsd_fast``."""
    root = cache_dir if cache_dir is not None else (os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    return Path(os.fspath(root)).expanduser()


def note(message: str, enabled: bool = True) -> None:
    """One progress line on stderr (stdout may be a data stream the user pipes on)."""
    if enabled:
        print(f"sqsd_fast: {message}", file=sys.stderr, flush=True)


def file_sha256(path: str | os.PathLike, *, progress: bool = True) -> str:
    """sha256 of a file's content, read in chunks (GGUF files can be tens of GB)."""
    size = os.path.getsize(path)
    bar = None
    if progress and size >= _HASH_BAR_FROM:
        bar = tqdm(total=size, unit="B", unit_scale=True, desc="sqsd_fast: hashing", file=sys.stderr)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return digest.hexdigest()


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yields an empty temporary directory beside ``final``; on success it becomes ``final``.

    On any exception, KeyboardInterrupt included, the temporary directory is deleted and
    ``final`` is untouched. If another process created ``final`` meanwhile (two runs
    converting the same file), its entry is kept and ours is discarded: both are complete.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{final.name[:24]}-", dir=final.parent))
    try:
        yield tmp
        _finish_tree(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(parent: Path, max_age_s: float = STALE_AFTER_S) -> None:
    """Deletes temporary entries left in ``parent`` by runs killed long ago."""
    now = time.time()
    for child in parent.glob(f"{TEMP_PREFIX}*"):
        try:
            if now - child.stat().st_mtime > max_age_s:
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        except OSError:
            pass  # another process may be removing it too


def _finish_tree(root: Path) -> None:
    # mkdtemp (and some writers) create owner-only files; a finished entry gets the usual
    # permissions, so that a cache shared through SQSD_FAST_CACHE is readable by the group.
    # Every file is flushed to disk before the rename makes the entry visible.
    file_mode = 0o666 & ~current_umask()
    dir_mode = file_mode | (file_mode & 0o444) >> 2  # searchable wherever readable
    root.chmod(dir_mode)
    for path in root.rglob("*"):
        if path.is_dir():
            path.chmod(dir_mode)
        elif path.is_file():
            path.chmod(file_mode)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
