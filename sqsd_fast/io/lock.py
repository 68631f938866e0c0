"""One run per output file: an advisory lock on ``OUT.lock`` held for the whole run.

Two runs writing the same ``--out`` would interleave their resume sidecars and race on the
final rename; the second one is refused instead, naming the first one's process. The lock
is ``flock``-based, so a killed run releases it with its process (the stale file is
harmless and is reused).

A run on several processes also locks each rank's own sidecars (``OUT.rank<r>-of-<W>.lock``,
``part=``), so a leftover process of an earlier launch cannot append to the sidecar a new
rank is writing; its rank 0 holds ``OUT.lock`` as well, which keeps out one-process runs and
launches of another world size.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded there
    fcntl = None


def lock_path(out_path: str | os.PathLike, part: str | None = None) -> Path:
    out = Path(out_path)
    return out.with_name(out.name + ("" if part is None else f".{part}") + ".lock")


@contextmanager
def output_lock(out_path: str | os.PathLike, *, option: str = "--out",
                part: str | None = None) -> Iterator[None]:
    """Hold the lock of ``out_path`` (of its sidecars named ``part``, see
    ``sqsd_fast.io.checkpoint.rank_part``) or raise ValueError if another process holds it."""
    if fcntl is None:
        yield
        return
    path = lock_path(out_path, part)
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ValueError(f"{option} {out_path} is being written by another run ({holder}); wait for it "
                             f"to finish, or choose another {option}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            try:
                path.unlink()   # while still holding it, so no other run can be between
            except FileNotFoundError:
                pass
    finally:
        handle.close()
