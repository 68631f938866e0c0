"""A rank that dies part-way through a torchrun run, for testing resume on real processes.

:func:`kill_rank_hook` writes a ``sitecustomize.py`` that every Python process started with
its folder on ``PYTHONPATH`` loads: on rank ``rank`` it wraps the pipeline's batch iterator
so the process kills itself (SIGKILL, no clean-up of any kind, as a lost node would be)
when the batch after the first ``after`` arrives. Those ``after`` batches are in the rank's
sidecar; the rest of its shard is not.
"""
from __future__ import annotations

from pathlib import Path

_HOOK = """
import os, signal
if os.environ.get("RANK") == "{rank}":
    import sqsd_fast.app.pipeline as pipeline
    _iterate = pipeline._iterate

    def _killed_part_way(*args, **kwargs):
        for k, rows in enumerate(_iterate(*args, **kwargs)):
            if k == {after}:
                os.kill(os.getpid(), signal.SIGKILL)
            yield rows

    pipeline._iterate = _killed_part_way
"""


def kill_rank_hook(folder: Path, *, rank: int = 1, after: int = 1) -> dict[str, str]:
    """Write the hook into ``folder``; the environment entry that loads it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_HOOK.format(rank=int(rank), after=int(after)))
    return {"PYTHONPATH": str(folder)}
