"""Atomic file writes: write a temporary file beside the target, fsync, then os.replace.

A reader (or a crash) never sees a half-written output: the target either keeps its old
content or has the complete new content.
"""
from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path in the target's directory; on success move it onto `path`.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise ValueError(f"{target}: the output directory {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ValueError(f"{target}: cannot write in {directory} ({exc.strerror})") from None
    os.close(fd)
    # mkstemp creates the file 0600; give the output the mode any new file gets (umask).
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):  # name the output, not the temporary file
            raise ValueError(f"{target}: could not be written ({exc.strerror or exc})") from None
        raise
    fsync_dir(directory)


def current_umask() -> int:
    """The process's umask, read without changing it.

    ``os.umask()`` can only be read by setting it, for every thread of the process, so a
    file another thread creates meanwhile would get the wrong mode. Linux reports it in
    /proc/self/status; elsewhere a probe file shows it."""
    mask = umask_from_proc()
    return umask_from_probe() if mask is None else mask


def umask_from_proc() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def umask_from_probe() -> int:
    """The read/write bits of the umask (the only ones a data file uses), from the mode a
    new file created with 0666 gets."""
    probe = os.path.join(tempfile.gettempdir(), f".sqsd-fast-umask-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        return 0o666 & ~os.fstat(fd).st_mode
    finally:
        os.close(fd)
        os.unlink(probe)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(directory: str | os.PathLike) -> None:
    """Persist a rename; not every platform allows opening a directory, so best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
