"""``resolve_model``: what the user gave as ``--model`` -> a Hugging Face model directory or hub id.

A directory or a hub id passes through unchanged. A GGUF file is de-quantized once into
``<cache>/gguf/v<format>/<sha256 of the file>/`` (see ``sqsd_fast.models.cache`` for the
cache root) and that directory is returned from then on: the key is the file's content,
so a renamed or copied file reuses the entry and a changed file gets a new one.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from sqsd_fast.data.records import looks_like_local_path
from sqsd_fast.models import gguf_convert
from sqsd_fast.models.cache import atomic_directory, cache_root, file_sha256, note

# (real path, size, mtime, inode) -> converted directory, so that the several places that
# resolve the same --model in one run (model, tokenizer, pipeline checks) hash it once.
_RESOLVED: dict[tuple, str] = {}


def resolve_model(path_or_id, *, cache_dir=None, progress: bool = True) -> str:
    """A local Hugging Face model directory (or hub id) for ``path_or_id``.

    Args:
        path_or_id: a model directory, a hub id ("owner/name") or a ``.gguf`` file (any
            file starting with the GGUF magic bytes counts as one).
        cache_dir: cache root for converted GGUF models (default ``$SQSD_FAST_CACHE``,
            else ``~/.cache/sqsd_fast``).
        progress: print progress of the one-time conversion on stderr.

    Raises:
        ValueError naming the path: it does not exist, it is a file that is not a GGUF,
        or the GGUF is truncated, corrupt, an adapter, or a model transformers cannot load
        as a causal LM. Checked before the long conversion starts.
    """
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise TypeError(f"model must be a directory, a hub id or a .gguf file path; got {type(path_or_id).__name__}")
    given = os.fspath(path_or_id)
    if os.path.isdir(given):
        return given
    path = os.path.expanduser(given)
    if os.path.isdir(path):
        return path
    if os.path.isfile(path):
        if path.lower().endswith(".gguf") or gguf_convert.has_gguf_magic(path):
            return _converted(path, cache_dir=cache_dir, progress=progress)
        raise ValueError(f"model {given!r} is a file, but neither a GGUF file nor a Hugging Face model directory; "
                         "give the model's directory, a hub id or a .gguf file")
    if given.lower().endswith(".gguf"):
        raise ValueError(f"GGUF file {given!r} does not exist")
    if looks_like_local_path(given):
        raise ValueError(f"model directory {given!r} does not exist "
                         "(give a Hugging Face model directory, a hub id or a .gguf file)")
    return given  # a hub id: transformers resolves it


def gguf_cache_dir(cache_dir=None) -> Path:
    """The directory holding one converted model per GGUF content hash."""
    return cache_root(cache_dir) / "gguf" / f"v{gguf_convert.CONVERSION_FORMAT}"


def _converted(path: str, *, cache_dir, progress: bool) -> str:
    stat = os.stat(path)
    memo_key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, os.fspath(cache_root(cache_dir)))
    entry = _RESOLVED.get(memo_key)
    if entry is not None and _complete(Path(entry)):
        return entry
    if not gguf_convert.has_gguf_magic(path):  # before hashing: a wrong file must fail at once
        gguf_convert.inspect_gguf(path)
    sha256 = file_sha256(path, progress=progress)
    entry = gguf_cache_dir(cache_dir) / sha256
    if not _complete(entry):
        _convert_into(path, entry, sha256, progress)
    _RESOLVED[memo_key] = str(entry)
    return str(entry)


def _convert_into(path: str, entry: Path, sha256: str, progress: bool) -> None:
    info = gguf_convert.inspect_gguf(path)  # every header check before the long part
    if entry.exists():
        # Entries appear by an atomic rename, so a partial one was damaged by hand (files
        # deleted); rebuilding it is the only useful thing to do.
        note(f"cache entry {entry} is incomplete; converting again", progress)
        shutil.rmtree(entry)
    types = "/".join(info.tensor_types)
    note(f"converting GGUF {path} ({info.size / 1e6:.1f} MB, {info.architecture}, {types}) to a float32 "
         f"Hugging Face model; this happens once, the result is cached in {entry}", progress)
    start = time.perf_counter()
    with atomic_directory(entry) as tmp:
        gguf_convert.convert_gguf(info, tmp, sha256=sha256, progress=progress)
    note(f"converted in {time.perf_counter() - start:.0f} s; later runs load {entry} directly", progress)


def _complete(entry: Path) -> bool:
    # The source file is written last, so its presence means the conversion finished.
    return (entry / gguf_convert.SOURCE_FILE).is_file() and (entry / "config.json").is_file()
