"""Runs on several processes (torchrun, accelerate launch): the world, the shards, the checks.

A scoring run started by ``torchrun --nproc_per_node=N --no-python sqsd-fast score ...``
(or under a ``torch.distributed`` group the caller created) splits the samples between the
processes ("ranks"); ``sqsd_fast.app.pipeline`` does the run, this module gives it:

- :func:`launched` / :func:`joined`: whether the environment asks for a multi-process run,
  and the :class:`World` (rank, size, local rank, exchanges of picklable objects), with
  the process group created (gloo on CPU, nccl on CUDA) only when nobody did and destroyed
  again by whoever created it; the exchanges themselves always go through gloo;
- :func:`shard_positions`: the deterministic, token-balanced split of the samples;
- :meth:`World.agree`: run a step on every rank and fail on every rank if one failed, so a
  rank never waits forever for a peer that gave up;
- :func:`check_same_options` and :func:`check_shared_directory`: the launch checks.

Ranks exchange objects only a few times, before scoring starts and after it ends; nothing
is exchanged while samples are scored.
"""
from __future__ import annotations

import heapq
import os
import secrets
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist

# Ranks that finish their shard early wait for the slowest one in the final exchange, for
# as long as the imbalance lasts; torch's default (10 to 30 min) could end a long run
# there. A rank that dies does not leave the others waiting this long: gloo sees the lost
# peer at once, and torchrun stops the remaining processes.
GROUP_TIMEOUT = timedelta(hours=24)
# Another machine may see a new file only after its attribute cache expires (NFS caches
# a directory's entries for up to 30 s by default); a rank looks this long before it
# concludes that --out is not on a filesystem it shares with rank 0.
SHARED_FILE_WAIT_S = 40.0
# Setting this to 0 makes every process run alone although torchrun's variables are set
# (a script under torchrun that scores on one of its ranks only).
ENV_SWITCH = "SQSD_FAST_DISTRIBUTED"


class DistributedRunError(ValueError):
    """A failure of a multi-process run, raised on every rank alike. Rank 0 reports it;
    ``reported_elsewhere`` tells the other ranks' command line not to print it again."""

    def __init__(self, message: str, *, reported_elsewhere: bool = False):
        super().__init__(message)
        self.reported_elsewhere = reported_elsewhere


@dataclass
class World:
    """The processes of one run: this one's ``rank`` of ``size``, its ``local_rank`` on its
    machine (which GPU it takes), and the process ``group`` its exchanges go through
    (None: the default group)."""

    rank: int
    size: int
    local_rank: int
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather(self, value: Any) -> list:
        """Every rank's ``value``, by rank."""
        gathered = [None] * self.size
        try:
            dist.all_gather_object(gathered, value, group=self.group)
        except RuntimeError as exc:
            raise DistributedRunError(
                f"rank {self.rank} lost contact with the other ranks (one of them stopped "
                f"or was killed: see its error, or torchrun's report): "
                f"{' '.join(str(exc).split()).split('. ')[0][:200]}"
            ) from None
        return gathered

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        return self.all_gather(value if self.is_main else None)[0]

    def agree(self, step: Callable[[], Any]) -> list:
        """Run ``step`` here and wait for every rank to have run its own; returns the
        results by rank. If it raised (an ``Exception``) on any rank, every rank raises
        a :class:`DistributedRunError` saying which rank failed and why."""
        value = error = cause = None
        try:
            value = step()
        except Exception as exc:   # reported through the exchange; interrupts are not
            error, cause = _describe(exc), exc
            if os.environ.get("SQSD_FAST_DEBUG"):
                traceback.print_exc()
        results = self.all_gather((error, value))
        failed = [(rank, e) for rank, (e, _) in enumerate(results) if e is not None]
        if not failed:
            return [v for _, v in results]
        message = _failure_message(failed, self.size)
        raised = DistributedRunError(message, reported_elsewhere=not self.is_main)
        if error is not None:
            raise raised from cause
        raise raised


@dataclass
class OneProcess(World):
    """A run alone, as rank 0 of a world of 1: each step runs here, and an exception
    propagates as raised (there is no other rank to tell)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    def all_gather(self, value: Any) -> list:
        return [value]

    def agree(self, step: Callable[[], Any]) -> list:
        return [step()]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DistributedRunError):
        return str(exc)
    if isinstance(exc, (ValueError, FileNotFoundError)):   # user errors: their text says it all
        return " ".join(str(exc).split())
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _failure_message(failed: list[tuple[int, str]], size: int) -> str:
    rank, text = failed[0]
    if len(failed) == size and all(t == text for _, t in failed):
        return text   # the same on every rank (a bad option): no rank to single out
    others = [r for r, _ in failed[1:]]
    also = f" (rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} failed too)" \
        if others else ""
    # Rank 0 does the steps only one rank does (reading and merging the sidecars): its
    # failure is the run's, named as in a one-process run.
    return f"{text}{also}" if rank == 0 else f"rank {rank} of {size}: {text}{also}"


# ------------------------------------------------------------------------ the world


def launched() -> bool:
    """Whether this process is one of several of a run: torchrun's (or accelerate's)
    ``WORLD_SIZE`` above 1, or a ``torch.distributed`` group of more than one process
    already initialized, unless ``SQSD_FAST_DISTRIBUTED=0``."""
    if os.environ.get(ENV_SWITCH, "").strip() == "0":
        return False
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return True
    except ValueError:
        pass
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def joined(device: str) -> Iterator[World]:
    """The :class:`World` of this process. Initializes ``torch.distributed`` from the
    launcher's variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) if
    nobody did, with nccl for a CUDA ``device`` and gloo otherwise, and destroys the group
    on exit if it created it; a group the caller created is used and left as it was."""
    created = False
    if not dist.is_initialized():
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        local_rank = _env_int("LOCAL_RANK", 0)
        if cuda and local_rank < torch.cuda.device_count():
            torch.cuda.set_device(local_rank)   # nccl's own tensors go to this rank's GPU
        try:
            dist.init_process_group("nccl" if cuda else "gloo", init_method="env://",
                                    timeout=GROUP_TIMEOUT)
        except (RuntimeError, ValueError, KeyError) as exc:
            variables = ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in
                                  ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
            raise ValueError(f"cannot join the other processes of this run ({variables}): "
                             f"{' '.join(str(exc).split())[:300]}; start it with torchrun or "
                             f"accelerate launch, or set {ENV_SWITCH}=0 to run alone") from None
        created = True
    # The ranks exchange small Python objects, never GPU tensors: through gloo they need no
    # GPU, no NCCL communicator and no current device, and wait with this module's timeout
    # (a caller's group keeps its own settings and its own traffic).
    side = None
    if not created or dist.get_backend() != "gloo":
        side = dist.new_group(backend="gloo", timeout=GROUP_TIMEOUT)
    try:
        rank = dist.get_rank()
        yield World(rank=rank, size=dist.get_world_size(),
                    local_rank=_env_int("LOCAL_RANK", rank), group=side)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
        elif side is not None:
            dist.destroy_process_group(side)


@contextmanager
def world_of_run(device: str) -> Iterator[World]:
    """The world this process runs in: the launch's (see :func:`joined`) when it is one of
    several (:func:`launched`), else a world of one (:class:`OneProcess`)."""
    if not launched():
        yield OneProcess()
        return
    with joined(device) as world:
        yield world


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return default


def rank_device(device: str, world: World) -> str:
    """The device of this rank for ``--device device``: ``cuda`` becomes
    ``cuda:LOCAL_RANK``; an explicit ``cuda:N`` would put every rank on one GPU, so it is
    refused. ``cpu`` stays."""
    if not device.startswith("cuda"):
        return device
    if device != "cuda":
        raise ValueError(f"--device {device}: with several processes each takes its own GPU "
                         f"(cuda:LOCAL_RANK); give --device cuda")
    count = torch.cuda.device_count()
    if world.local_rank < count:
        return f"cuda:{world.local_rank}"
    raise ValueError(f"--device cuda: local rank {world.local_rank} has no GPU of its own "
                     f"({count} visible on {socket.gethostname()}); start at most {count} "
                     f"processes per machine")


# ----------------------------------------------------------------------- the shards


def shard_positions(costs: Sequence[int], size: int) -> list[list[int]]:
    """Split positions ``0 .. len(costs) - 1`` between ``size`` ranks so that each rank's
    total cost (token count) is about the same: longest first (ties by position), each to
    the rank with the least so far (ties by rank). Every position goes to exactly one rank;
    a rank may get none when there are fewer positions than ranks. The same costs give the
    same split on every rank and every run. Each rank's positions come back ascending."""
    if size < 1:
        raise ValueError(f"the world size must be at least 1, got {size}")
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    loads = [(0, rank) for rank in range(size)]   # already a heap
    shards: list[list[int]] = [[] for _ in range(size)]
    for i in order:
        load, rank = heapq.heappop(loads)
        shards[rank].append(i)
        heapq.heappush(loads, (load + costs[i], rank))
    return [sorted(s) for s in shards]


def shard_samples(samples: Sequence, size: int, rank: int) -> list:
    """Rank ``rank``'s share of ``samples`` (``TokenizedSample``s, balanced by
    ``n_tokens``), in input order."""
    positions = shard_positions([s.n_tokens for s in samples], size)[rank]
    return [samples[i] for i in positions]


# ----------------------------------------------------------------------- the checks


def check_same_options(world: World, views: Sequence[Mapping[str, Any]],
                       labels: Mapping[str, str]) -> None:
    """Fail on every rank, naming the first entry of ``views`` (one dict per rank, the same
    list on every rank) on which a rank differs from rank 0; ``labels`` says how to name an
    entry (``--batch-size``)."""
    reference = views[0]
    for rank, view in enumerate(views[1:], 1):
        for key in sorted(set(reference) | set(view)):
            if reference.get(key) != view.get(key):
                raise DistributedRunError(
                    f"inconsistent options across ranks: {labels.get(key, key)} is "
                    f"{_show(reference.get(key))} on rank 0 but {_show(view.get(key))} on rank "
                    f"{rank}; start every rank with the same options and the same files",
                    reported_elsewhere=not world.is_main)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_shared_directory(world: World, directory: str | os.PathLike, option: str = "--out"
                           ) -> None:
    """Fail on every rank unless every rank sees the file rank 0 writes in ``directory``:
    the ranks' sidecars are merged there by rank 0, so it must be one directory for all."""
    directory = Path(directory)
    path = error = None   # rank 0's check file, or why it could not write one
    if world.is_main:
        token = secrets.token_hex(8)
        path = directory / f".sqsd-fast-shared-check-{token}"
        try:
            path.write_text(token, encoding="utf-8")
        except OSError as exc:
            error, path = f"{option} {directory}: cannot write in it ({exc.strerror})", None
    name, error, shown = world.broadcast((path.name if path else None, error, str(directory)))
    try:
        seen = error is None and _sees(directory / name, name.rsplit("-", 1)[-1])
        views = world.all_gather((seen, socket.gethostname()))
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    if error is not None:
        raise DistributedRunError(error, reported_elsewhere=not world.is_main)
    blind = [(rank, host) for rank, (ok, host) in enumerate(views) if not ok]
    if blind:
        rank, host = blind[0]
        raise DistributedRunError(
            f"{option} {shown} is not on a filesystem all ranks share (rank {rank} on "
            f"{host} does not see the file rank 0 on {views[0][1]} wrote there); give an "
            f"{option} on a filesystem every machine mounts", reported_elsewhere=not world.is_main)


def _sees(path: Path, token: str) -> bool:
    deadline = time.monotonic() + SHARED_FILE_WAIT_S
    while True:
        try:
            return path.read_text(encoding="utf-8") == token
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)
