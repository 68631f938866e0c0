"""Resume checkpoints: sidecar files that let an interrupted run continue.

While a run scores OUT, two sidecars sit beside it:
- OUT.manifest.json: the run's fingerprint (hashes and paths of the inputs, the options
  that change scores); written once, atomically, before the first batch;
- OUT.partial.jsonl: rows of completed batches, appended, flushed and fsynced per batch.

A resumed run must have the same fingerprint; it skips the indices already in the
partial file. When the run completes, the final OUT is written and the sidecars removed.
A run that is not resuming refuses to overwrite existing sidecars.

A run on several processes (torchrun) gives each rank its own pair, named by a part:
OUT.rank<r>-of-<W>.partial.jsonl and OUT.rank<r>-of-<W>.manifest.json, so no two
processes ever append to one file. A resume reads every pair found beside OUT, whatever
world size wrote it (:func:`read_saved_rows`): rows are rows, whoever scored them.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from sqsd_fast import __version__
from sqsd_fast.io.atomic import atomic_write_text, fsync_dir
from sqsd_fast.io.writers import clean_value

# 2: the fingerprint lists each option of the command (sqsd_fast/options/) by name.
MANIFEST_VERSION = 2
# Files above this size are fingerprinted by size and modification time, not hashed
# (model weights can be tens of GB; adapters and data files are hashed in full).
_HASH_LIMIT_BYTES = 256 * 1024 * 1024


def sidecar_paths(out_path: str | os.PathLike, part: str | None = None) -> tuple[Path, Path]:
    """(partial rows, manifest) paths for output `out_path`; `part` names one process's
    pair (:func:`rank_part`), None the pair of a one-process run."""
    out = Path(out_path)
    stem = out.name if part is None else f"{out.name}.{part}"
    return (out.with_name(stem + ".partial.jsonl"), out.with_name(stem + ".manifest.json"))


def rank_part(rank: int, world_size: int) -> str:
    """The part name of rank `rank`'s sidecars in a run on `world_size` processes."""
    return f"rank{rank}-of-{world_size}"


def sidecar_parts(out_path: str | os.PathLike) -> list[str | None]:
    """The parts whose sidecars exist beside `out_path`: None (a one-process run) first,
    then each rank's part, sorted."""
    out = Path(out_path)
    directory = out.parent if str(out.parent) else Path(".")
    # Matched by listing, not by glob: an output name may contain glob characters.
    pattern = re.compile(re.escape(out.name)
                         + r"\.rank(\d+)-of-(\d+)\.(?:partial\.jsonl|manifest\.json)")
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    found = {(int(m.group(2)), int(m.group(1))) for m in map(pattern.fullmatch, names) if m}
    ranks = [rank_part(rank, world) for world, rank in sorted(found)]
    plain = any(p.exists() for p in sidecar_paths(out))
    return ([None] if plain else []) + ranks


def read_saved_rows(out_path: str | os.PathLike, fingerprint: Mapping[str, Any],
                    resume: bool) -> dict[int, dict]:
    """The completed rows of every sidecar pair beside `out_path` (see
    :meth:`ResumeCheckpoint.check`, which each pair passes), by index; an index saved in
    two pairs keeps the first."""
    parts = sidecar_parts(out_path)
    if parts and not resume:   # one message naming every file, not one pair at a time
        names = [str(p) for part in parts for p in sidecar_paths(out_path, part) if p.exists()]
        raise ValueError(_unfinished_run_message(
            ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")))
    done: dict[int, dict] = {}
    for part in parts:
        for index, row in ResumeCheckpoint(out_path, fingerprint, part=part).check(resume).items():
            done.setdefault(index, row)
    return done


def has_saved_rows(out_path: str | os.PathLike) -> bool:
    """Whether any sidecar beside `out_path` holds completed rows (worth a --resume)."""
    return any(ResumeCheckpoint(out_path, {}, part=part).holds_rows()
               for part in sidecar_parts(out_path))


def delete_sidecars(out_path: str | os.PathLike) -> None:
    """Delete every sidecar pair beside `out_path` (after the output is written)."""
    for part in sidecar_parts(out_path):
        ResumeCheckpoint(out_path, {}, part=part).finish()


def file_digest(path: str | os.PathLike, *, limit: int | None = None) -> str:
    """sha256 of a file, or "size:mtime" when it is larger than `limit` bytes."""
    p = Path(path)
    stat = p.stat()
    if limit is not None and stat.st_size > limit:
        return f"size={stat.st_size},mtime_ns={stat.st_mtime_ns}"
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


# peft keeps these adapter_config.json fields as sets and writes them as lists in set
# order, which depends on the process's hash seed: two identical trainings write the same
# set in different orders. The digest takes them sorted.
_SET_VALUED_ADAPTER_FIELDS = ("target_modules", "exclude_modules", "modules_to_save")


def adapter_config_digest(path: str | os.PathLike) -> str:
    """Digest of a peft adapter_config.json that ignores the order of set-valued fields
    (falls back to the file's bytes when it is not a JSON object)."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return file_digest(path)
    if not isinstance(config, dict):
        return file_digest(path)
    for key in _SET_VALUED_ADAPTER_FIELDS:
        value = config.get(key)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            config[key] = sorted(value)
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return "json-sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def path_fingerprint(path: str | os.PathLike, *, limit: int | None = _HASH_LIMIT_BYTES) -> dict:
    """Absolute path plus a digest of the file, or of every file under a directory
    (adapter_config.json files by content, whatever order peft wrote their sets in)."""
    p = Path(path).expanduser()

    def digest(f: Path) -> str:
        return adapter_config_digest(f) if f.name == "adapter_config.json" else file_digest(f, limit=limit)

    if p.is_file():
        return {"path": str(p.resolve()), "digest": digest(p)}
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            rel = f.relative_to(p).as_posix()
            if rel.startswith(".") or "/." in rel:
                continue  # hidden files (caches, editor swap files) do not change results
            h.update(f"{rel}\0{digest(f)}\n".encode())
        return {"path": str(p.resolve()), "digest": "dir-sha256:" + h.hexdigest()}
    return {"path": str(path), "digest": None}


def run_record_path(out_path: str | os.PathLike) -> Path:
    """``OUT.meta.json``: what produced a finished output (kept; the sidecars are not)."""
    out = Path(out_path)
    return out.with_name(out.name + ".meta.json")


def write_run_record(out_path: str | os.PathLike, fingerprint: Mapping[str, Any],
                     n_rows: int, **about: Any) -> None:
    """Record beside a finished output which inputs and options produced it, so a later
    step (``subsets``) can check it is given the same data file; ``about``: more to say
    (e.g. which directions and state a score used, in words)."""
    record = {"version": MANIFEST_VERSION, "sqsd_fast": __version__, "output": str(out_path),
              "n_rows": n_rows, **about, "fingerprint": fingerprint}
    atomic_write_text(run_record_path(out_path), json.dumps(record, indent=1) + "\n")


def read_run_record(out_path: str | os.PathLike) -> dict | None:
    """The record written by :func:`write_run_record`, or None if there is none."""
    path = run_record_path(out_path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path}: unreadable run record; delete it or score again") from None


class ResumeCheckpoint:
    """The sidecars of one output file; see the module docstring."""

    def __init__(self, out_path: str | os.PathLike, fingerprint: Mapping[str, Any], *,
                 part: str | None = None):
        self.out_path = Path(out_path)
        self.partial_path, self.manifest_path = sidecar_paths(out_path, part)
        self.fingerprint = json.loads(json.dumps(dict(fingerprint)))  # plain, comparable
        self._file = None

    def exists(self) -> bool:
        return self.partial_path.exists() or self.manifest_path.exists()

    def check(self, resume: bool) -> dict[int, dict]:
        """Validate the sidecars against this run without changing anything.

        Returns the completed rows by index ({} for a fresh run). Raises ValueError when
        sidecars exist and `resume` is False, or when they belong to a different run.
        """
        if not self.exists():
            return {}
        names = " and ".join(str(p) for p in (self.partial_path, self.manifest_path)
                             if p.exists())
        if not resume:
            raise ValueError(_unfinished_run_message(names))
        if not self.manifest_path.exists():
            raise ValueError(f"{self.partial_path} has no manifest "
                             f"({self.manifest_path.name}), so it cannot be checked against "
                             f"this run; delete it to start over")
        try:
            saved = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{self.manifest_path}: unreadable manifest; delete "
                             f"{names} to start over") from None
        differences = _differences(saved.get("fingerprint", {}), self.fingerprint)
        if saved.get("version") != MANIFEST_VERSION:
            differences.insert(0, f"manifest version {saved.get('version')!r} != "
                                  f"{MANIFEST_VERSION}")
        if differences:
            shown = "; ".join(differences[:4]) + ("; ..." if len(differences) > 4 else "")
            raise ValueError(f"cannot resume: the saved run used different inputs or "
                             f"options ({shown}); rerun with the original options, or "
                             f"delete {names} to start over")
        return self._read_partial()

    def start(self, resume: bool) -> dict[int, dict]:
        """check(), then write the manifest (if new) and open the partial file for
        appending. Returns the completed rows by index."""
        done = self.check(resume)
        self.open()
        return done

    def open(self) -> None:
        """Write the manifest (if new) and open the partial file for appending, without
        checking: for a caller that has checked these sidecars already (a multi-process
        run checks every rank's pair once, on rank 0)."""
        if not self.manifest_path.exists():
            atomic_write_text(self.manifest_path, json.dumps(
                {"version": MANIFEST_VERSION, "output": str(self.out_path),
                 "fingerprint": self.fingerprint}, indent=1) + "\n")
        self._file = open(self.partial_path, "a", encoding="utf-8")
        fsync_dir(self.partial_path.parent)

    def holds_rows(self) -> bool:
        return self.partial_path.exists() and self.partial_path.stat().st_size > 0

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append one batch of rows durably (flush + fsync)."""
        if self._file is None:
            raise RuntimeError("ResumeCheckpoint.append called before start()")
        text = "".join(json.dumps({k: clean_value(v) for k, v in r.items()},
                                  ensure_ascii=False, allow_nan=False) + "\n"
                       for r in rows)
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self) -> None:
        """Close and delete the sidecars (call after the final output is written)."""
        self.close()
        for p in (self.partial_path, self.manifest_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def _read_partial(self) -> dict[int, dict]:
        done: dict[int, dict] = {}
        if not self.partial_path.exists():
            return done
        data = self.partial_path.read_bytes()
        good_end = 0
        lines = data.split(b"\n")
        for lineno, line in enumerate(lines, 1):
            is_last = lineno == len(lines)
            if not line.strip():
                if not is_last:
                    good_end += len(line) + 1
                continue
            try:
                row = json.loads(line)
                index = int(row["index"])
            except (ValueError, KeyError, TypeError):
                if is_last:
                    break  # a write cut short by the interruption: drop it
                raise ValueError(f"{self.partial_path}: line {lineno} is damaged; delete "
                                 f"{self.partial_path} and {self.manifest_path} to start "
                                 f"over") from None
            if is_last:
                break  # no trailing newline: the batch's write did not complete
            done.setdefault(index, row)
            good_end += len(line) + 1
        if good_end != len(data):
            with open(self.partial_path, "r+b") as f:  # cut the incomplete tail
                f.truncate(good_end)
                os.fsync(f.fileno())
        return done


def _unfinished_run_message(names: str) -> str:
    return (f"found resume files from an earlier, unfinished run: {names}; rerun with "
            f"--resume to continue it, or delete them to start over")


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = ""
                 ) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: {_short(a)} then, {_short(b)} now")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
