"""The mechanism every command's options share: a field is a ``--option``, a keyword and
part of the resume fingerprint; values are checked when the dataclass is built and a bad
one raises :class:`OptionError` naming the field."""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Callable, ClassVar

from sqsd_fast.choices import check_positive_int, name_value_pairs
from sqsd_fast.io.checkpoint import path_fingerprint
from sqsd_fast.models.adapters import check_direction_is_usable, read_adapter
from sqsd_fast.models.names import model_by_name


def check_named_directions(name, value):
    """``NAME=DIR`` direction adapters (a list, one string or a mapping), each read now so
    that a bad directory is a usage error, not a failed run; as a list of ``NAME=DIR``."""
    pairs = name_value_pairs(name, value, "NAME=DIR")
    if pairs:   # read now, so that a bad directory is a usage error, not a failed run
        for key, path in pairs:
            try:
                check_direction_is_usable(read_adapter(path))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} {key}={path}: {exc}") from None
    return [f"{key}={path}" for key, path in pairs]


def optional_positive(name, value):
    return check_positive_int(name, value, optional=True)


class OptionError(ValueError):
    """A bad option value; ``option`` is the dataclass field name."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def _metadata(help: str, metavar: str | None = None, **kwargs) -> dict:
    # HfArgumentParser passes the metadata on to add_argument as keywords.
    return {"help": help, **({"metavar": metavar} if metavar else {}), **kwargs}


def required_option(help: str, metavar: str | None = None) -> Any:
    """A dataclass field that is a required CLI option."""
    return field(metadata=_metadata(help, metavar))


def option(default, help: str, metavar: str | None = None, **kwargs) -> Any:
    """A dataclass field that is a CLI option with a default (``choices=`` etc. allowed)."""
    return field(default=default, metadata=_metadata(help, metavar, **kwargs))


class CheckedOptions:
    """Base of every options dataclass: runs ``CHECKS`` ({field: check(name, value) ->
    value}, merged over the class hierarchy) when the dataclass is built."""

    CHECKS: ClassVar[dict[str, Callable]] = {}

    def __post_init__(self) -> None:
        checks: dict[str, Callable] = {}
        for klass in reversed(type(self).__mro__):
            checks.update(vars(klass).get("CHECKS", {}))
        for name, check in checks.items():
            try:
                setattr(self, name, check(name, getattr(self, name)))
            except ValueError as exc:
                raise OptionError(name, str(exc)) from None
        if isinstance(getattr(self, "model", None), str):    # --model smollm2, gemma3-270m
            try:
                self.model = model_by_name(self.model, progress=not getattr(self, "quiet", False))
            except Exception as exc:     # a failed download: the option and why
                raise OptionError("model", f"model {self.model}: {exc}") from None

    # Earlier keyword names of fields that were renamed: {old: field}; see from_keywords.
    ALIASES: ClassVar[dict] = {}

    @classmethod
    def from_keywords(cls, **keywords: Any):
        """The options from keywords, which may use the earlier names in ``ALIASES`` (the CLI
        and the Python API build options this way)."""
        for old, new in cls.ALIASES.items():
            if old in keywords:
                if new in keywords:
                    raise OptionError(old, f"{old} is the earlier name of {new}; give one of them")
                keywords[new] = keywords.pop(old)
        return cls(**keywords)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # Options that change results only when set, fingerprinted only then (so that adding
    # one does not make every earlier run's sidecars foreign to --resume).
    FINGERPRINTED_WHEN_SET: ClassVar[frozenset] = frozenset({"load_in_4bit", "load_in_8bit"})

    def fingerprint(self, *, whole_file: str, whole_file_is_local: bool = True, **extra) -> dict:
        """What identifies a run's results, for resume checks: the command, every field not
        in ``NOT_FINGERPRINTED`` (``PATH_FIELDS`` and ``ADAPTER_FIELDS`` by content), the
        input field ``whole_file`` hashed in full whatever its size (a hub name as given
        when not ``whole_file_is_local``), and ``extra``."""
        by_content = {*getattr(self, "PATH_FIELDS", ()), *getattr(self, "ADAPTER_FIELDS", ())}
        named = set(getattr(self, "NAMED_ADAPTER_FIELDS", ()))
        fp: dict[str, Any] = {"command": self.COMMAND, **extra}
        for name, key in self.fingerprinted_fields():
            value = getattr(self, name)
            if name in self.FINGERPRINTED_WHEN_SET and not value:
                continue   # an option added later: runs without it keep the fingerprint they had
            if name == whole_file:
                value = (path_fingerprint(value, limit=None) if whole_file_is_local
                         else {"path": str(value), "digest": None})
            elif name in by_content and value is not None:
                value = path_fingerprint(value)
            elif name in named:       # NAME=DIR items: each directory by content
                value = {k: path_fingerprint(v) for k, v in
                         (item.split("=", 1) for item in value)}
            fp[key] = value
        return fp

    def fingerprinted_fields(self) -> list[tuple[str, str]]:
        """(field, its key in the fingerprint): every field not in NOT_FINGERPRINTED."""
        return [(f.name, f.name) for f in dataclasses.fields(self) if f.name not in self.NOT_FINGERPRINTED]


