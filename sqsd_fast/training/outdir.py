"""The adapter output directory of ``train-adapter``: checks, resume state, finishing.

Layout of ``out``:
    out/checkpoints/checkpoint-N/   Trainer checkpoints (adapter, optimizer, RNG state)
    out/checkpoints/train_options.json   what the run was started with (resume check)
    out/train_summary.json          losses, options, counts (written when training ends)
    out/adapter_config.json         written LAST: its presence marks a finished adapter
    out/adapter_model.safetensors

A finished adapter is recognised by ``adapter_config.json`` in ``out`` itself (checkpoints
sit one level deeper). The final adapter is saved into a hidden temporary directory and
its files moved into ``out`` with ``adapter_config.json`` last, so a crash at any point
leaves either a finished adapter or a directory that ``resume`` continues.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqsd_fast.io.atomic import atomic_write_text, fsync_dir
from sqsd_fast.options.train_checks import CHECKPOINTS  # one name: also the options' output_dir

MARKER = "adapter_config.json"
SUMMARY = "train_summary.json"
STARTED = "train_options.json"
_TMP = ".final-adapter.tmp"
# Everything train-adapter itself writes into out; other files are the user's.
OWN_NAMES = frozenset({MARKER, "adapter_model.safetensors", "adapter_model.bin", "README.md",
                       SUMMARY, CHECKPOINTS, _TMP})


@dataclass
class OutState:
    """What ``out`` holds before a run."""

    path: Path
    checkpoint: str | None     # the newest Trainer checkpoint, if any
    finished: bool             # a finished adapter is there


def inspect_out(out: str) -> OutState:
    from transformers.trainer_utils import get_last_checkpoint
    path = Path(out).expanduser()
    ckpt_dir = path / CHECKPOINTS
    checkpoint = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    return OutState(path, checkpoint, (path / MARKER).is_file())


def check_out(out: str, *, resume: bool, overwrite: bool) -> OutState:
    """Refuse an ``out`` this run must not write into; changes nothing."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory for the adapter")
    if not path.exists():
        if not path.parent.is_dir():
            raise ValueError(f"--out {out}: the parent directory {path.parent} does not exist")
        return OutState(path, None, False)
    state = inspect_out(out)
    if state.finished and not overwrite:
        raise ValueError(f"--out {out} already holds a finished adapter ({MARKER}); nothing to "
                         f"resume. Give a new --out, or --overwrite to train it again")
    if state.checkpoint and not (resume or overwrite):
        raise ValueError(f"--out {out} holds checkpoints of an unfinished run "
                         f"({Path(state.checkpoint).name}); continue it with --resume or "
                         f"start over with --overwrite")
    others = sorted(p.name for p in path.iterdir() if p.name not in OWN_NAMES)
    if others and not overwrite:
        raise ValueError(f"--out {out} is not empty (e.g. {others[0]}); give a new or empty "
                         f"directory, or --overwrite (only train-adapter's own files are "
                         f"replaced)")
    return state


def check_merge_to(merge_to: str | None, *, option: str = "--merge-to") -> None:
    if merge_to is None:
        return
    path = Path(merge_to).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{option} {merge_to} exists and is not an empty directory; give a "
                         f"new directory for the merged model")
    if not path.parent.is_dir():
        raise ValueError(f"{option} {merge_to}: the parent directory {path.parent} does "
                         f"not exist")


def start_out(state: OutState, *, overwrite: bool) -> None:
    """Create ``out/checkpoints``; with ``overwrite``, first remove what an earlier run
    left (the marker first, so the directory stops looking finished at once)."""
    if overwrite and state.path.is_dir():
        for name in [MARKER, *sorted(OWN_NAMES - {MARKER})]:
            target = state.path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        state.checkpoint, state.finished = None, False
    (state.path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)


def check_started(state: OutState, fingerprint: dict[str, Any]) -> None:
    """Record what this run trains with; a resumed run must match what was recorded."""
    record = state.path / CHECKPOINTS / STARTED
    fingerprint = json.loads(json.dumps(fingerprint))   # plain JSON values, comparable
    if state.checkpoint is not None and record.is_file():
        before = json.loads(record.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(before) | set(fingerprint)
                         if before.get(k) != fingerprint.get(k))
        if changed:
            name = changed[0]
            raise ValueError(f"--resume: {name} differs from the interrupted run's "
                             f"({before.get(name)!r} then, {fingerprint.get(name)!r} now); "
                             f"use the same options, or --overwrite to start over")
        return
    atomic_write_text(record, json.dumps(fingerprint, indent=1, sort_keys=True))


def finish_out(state: OutState, peft_model, summary: dict, *, keep_checkpoints: bool,
               before_marker=None) -> None:
    """Save the final adapter into ``out`` (marker last), then drop the checkpoints.

    ``before_marker()`` runs after the adapter weights are saved and before the marker
    is moved in (the merged model is written there, so a failed merge leaves a run that
    ``resume`` finishes).
    """
    tmp = state.path / _TMP
    if tmp.exists():
        shutil.rmtree(tmp)
    peft_model.save_pretrained(str(tmp))
    if before_marker is not None:
        before_marker()
    atomic_write_text(state.path / SUMMARY, json.dumps(summary, indent=1, default=str))
    names = sorted(os.listdir(tmp), key=lambda n: n == MARKER)   # the marker last
    for name in names:
        os.replace(tmp / name, state.path / name)
        fsync_dir(state.path)
    tmp.rmdir()
    if not keep_checkpoints:
        shutil.rmtree(state.path / CHECKPOINTS, ignore_errors=True)


def write_merged(peft_model, tokenizer, merge_to: str, *, extra_files: dict[str, str] | None = None) -> None:
    """The base model with the LoRA merged in, plus the tokenizer (and ``extra_files``,
    {name: text}), written to a temporary directory beside ``merge_to`` and renamed into
    place (``merge_to`` is new or empty)."""
    target = Path(merge_to).expanduser()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        merged = peft_model.merge_and_unload()
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if target.is_dir():
            target.rmdir()          # checked empty before training
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)
