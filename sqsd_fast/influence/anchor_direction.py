"""``sqsd-fast anchor-direction``: a direction from anchor samples instead of a trained adapter.

The mean induced update of an anchor set at a state, ``dW_m = -(mean G_B A + B mean G_A)``,
is a rank-2r direction per module (``GradientStats.mean_update``, factors.py); written as
a LoRA adapter directory, it is what ``--danger-direction`` reads. SQSD then asks how far
a sample's update points along the update the anchors would make, as gradient matching
asks how far its gradient points along the anchors' (He et al. 2024), so the two differ
only in the score, not in where the direction comes from (issue #17).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sqsd_fast.options import AnchorDirectionOptions


@dataclass
class AnchorDirectionResult:
    options: AnchorDirectionOptions
    out: Path
    n_anchors: int             # anchors with a response token (the others are left out)
    n_modules: int
    rank: int                  # of the direction in every module (2 x the state's rank)
    seconds: float


def anchor_direction(options: AnchorDirectionOptions | None = None, /, **kwargs) -> AnchorDirectionResult:
    """Writes the anchors' mean induced update at ``state`` to ``out`` (see the options)."""
    from sqsd_fast.checks import check_adapter_path, check_device_available, check_model_path
    from sqsd_fast.data.records import read_records
    from sqsd_fast.data.tokenize import count_response_tokens, load_tokenizer, tokenize_records
    from sqsd_fast.influence.stats import GradientStats
    from sqsd_fast.models import resolve_model
    from sqsd_fast.models.adapters import save_direction
    from sqsd_fast.quiet import quiet_libraries

    o = options if options is not None else AnchorDirectionOptions(**kwargs)
    started = time.perf_counter()
    out = Path(o.out)     # every check before anything loads
    if out.exists():
        raise ValueError(f"--out {o.out} already exists; give a new directory for the direction")
    if not out.absolute().parent.is_dir():
        raise ValueError(f"--out {o.out}: the directory {out.absolute().parent} does not exist")
    if not Path(o.anchors).is_file():
        raise ValueError(f"--anchors {o.anchors}: file not found")
    check_adapter_path("--state", o.state)
    check_model_path(o.model)
    check_device_available(o.device)
    try:
        records = read_records(o.anchors, o.field_names())
    except ValueError as exc:
        raise ValueError(f"--anchors {o.anchors}: {exc}") from None
    tokenizer = load_tokenizer(o.tokenizer or resolve_model(o.model, progress=not o.quiet), option="--tokenizer")
    anchors = tokenize_records(records, tokenizer, max_length=o.max_length)
    with quiet_libraries():
        stats = GradientStats.from_pretrained(o.model, o.state, tokenizer=tokenizer, dtype=o.dtype,
                                              device=o.device, backend=o.backend, batch_size=o.batch_size,
                                              max_length=o.max_length)
    direction = stats.mean_update(anchors, label=f"--anchors {o.anchors}", response_tokens=o.response_tokens)
    n_used = sum(1 for s in anchors if count_response_tokens(s.labels) > 0)
    about = {"made_by": "sqsd-fast anchor-direction", "options": asdict(o),
             "anchors": os.fspath(o.anchors), "n_anchors": n_used, "n_records": len(records),
             "formula": "D_m = -(mean G_B A + B mean G_A) at --state (alpha/r of the state kept in A, B as loaded)"}
    save_direction(direction, out, base_model=o.model, about=about)
    ranks = {int(f.A.shape[0]) for f in direction.values()}
    return AnchorDirectionResult(o, out, n_used, len(direction), max(ranks), time.perf_counter() - started)


def format_summary(result: AnchorDirectionResult) -> str:
    o = result.options
    return (f"sqsd-fast anchor-direction: mean induced update of {result.n_anchors} anchors from {o.anchors} "
            f"at {o.state}\n  {result.n_modules} modules, rank {result.rank}; written to {result.out} "
            f"in {result.seconds:.1f}s\n  use it as: --danger-direction {result.out}")
