"""``sqsd-fast merge-adapter``: a base model with a LoRA adapter merged into its weights.

``train-adapter --merge-to`` writes the merged model at the end of a training run; this
writes it for an adapter trained earlier, through the same writer (``outdir.write_merged``:
peft's merge, then ``save_pretrained`` into a temporary directory renamed into place). The
arithmetic is the same as well, so a float32 adapter merged into the base it was trained on
gives --merge-to's weights bit for bit (tests/test_merge_adapter.py). A kept adapter of a
few megabytes then stands in for a merged model of hundreds (benchmarks/validation/
rebuilds its aligned model this way).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sqsd_fast.data.tokenize import load_tokenizer
from sqsd_fast.models import resolve_model
from sqsd_fast.models.adapters import check_against_model, load_base_model, read_adapter
from sqsd_fast.models.quiet import quiet_libraries
from sqsd_fast.options.checks import check_adapter_path, check_model_path
from sqsd_fast.options.merge_adapter import MergeAdapterOptions
from sqsd_fast.training import outdir

MERGE_RECORD = "merged_from.json"


@dataclass
class MergeResult:
    options: MergeAdapterOptions
    out: Path
    n_modules: int             # adapted modules merged
    seconds: float


def merge_adapter(options: MergeAdapterOptions | None = None, /, **kwargs) -> MergeResult:
    """Writes ``model`` with ``adapter`` merged in to ``out`` (see MergeAdapterOptions)."""

    if options is None:
        options = MergeAdapterOptions(**kwargs)
    elif kwargs:
        raise TypeError("give merge_adapter either a MergeAdapterOptions or keywords, not both")
    o, started = options, time.perf_counter()
    # every check that reads nothing big first, in the order a user would fix them
    outdir.check_merge_to(o.out, option="--out")
    check_adapter_path("--adapter", o.adapter)
    check_model_path(o.model)
    try:
        factors = read_adapter(o.adapter)       # plain LoRA on linear layers only
    except ValueError as exc:
        raise ValueError(f"--adapter {o.adapter}: {exc}") from None
    source = resolve_model(o.model, progress=not o.quiet)
    tokenizer = load_tokenizer(o.tokenizer or source, option="--tokenizer")
    with quiet_libraries():
        base = load_base_model(source, dtype=o.dtype)
        try:
            check_against_model(o.adapter, factors, base)
        except ValueError as exc:
            raise ValueError(f"--adapter {o.adapter} does not fit --model {o.model}: {exc}") from None
        from peft import PeftModel
        peft_model = PeftModel.from_pretrained(base, str(o.adapter), is_trainable=False).eval()
        record = {"made_by": "sqsd-fast merge-adapter", "options": asdict(o)}
        outdir.write_merged(peft_model, tokenizer, o.out,
                            extra_files={MERGE_RECORD: json.dumps(record, indent=1) + "\n"})
    return MergeResult(o, Path(o.out), len(factors), time.perf_counter() - started)


def format_summary(result: MergeResult) -> str:
    o = result.options
    return (f"sqsd-fast merge-adapter: {o.adapter} ({result.n_modules} modules) merged into {o.model}\n"
            f"  written to {result.out} ({o.dtype}) in {result.seconds:.1f}s; use it as --model {result.out}")
