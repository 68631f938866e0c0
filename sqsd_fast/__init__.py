"""sqsd_fast: fast, exact SQSD (sample-level quantification of safety degradation).

The package imports, and the float64 reference backend works, even when the compiled
extension is not built; ``backend="auto"`` then warns once and says how to build it.
"""

from sqsd_fast import _openmp

_openmp.shorten_spin_waits()   # before torch loads libgomp (see _openmp.py)

from sqsd_fast import _moved  # noqa: E402
from sqsd_fast.ops import (  # noqa: E402
    backend_available,
    build_info,
    direction_sqnorm,
    factor_grad_stats,
    lora_update_stats,
    lora_update_stats_projected,
    project_directions,
    resolve_backend,
)

__version__ = "0.1.0"

_moved.install()   # old module paths (sqsd_fast.pipeline, ...) keep working


def __getattr__(name: str):
    # The scorer and the pipeline pull in transformers and peft; import them only when
    # asked for, so that the kernel ops stay cheap to import for tools that embed them.
    if name == "SQSDScorer":
        from sqsd_fast.scoring.scorer import SQSDScorer  # noqa: PLC0415 (lazy API, see above)

        return SQSDScorer
    if name == "DriftMonitor":
        from sqsd_fast.training.drift import DriftMonitor  # noqa: PLC0415 (lazy API, see above)

        return DriftMonitor
    if name == "GradientStats":
        from sqsd_fast.influence.stats import GradientStats  # noqa: PLC0415 (lazy API, see above)
        return GradientStats
    if name in ("score_file", "project_file", "baseline_file"):
        from sqsd_fast.app import pipeline  # noqa: PLC0415 (lazy API, see above)

        return getattr(pipeline, name)
    if name == "run_command":
        from sqsd_fast.app.commands import run_command  # noqa: PLC0415 (lazy API, see above)

        return run_command
    raise AttributeError(f"module 'sqsd_fast' has no attribute {name!r}")


__all__ = [
    "DriftMonitor",
    "GradientStats",
    "SQSDScorer",
    "__version__",
    "backend_available",
    "baseline_file",
    "build_info",
    "direction_sqnorm",
    "factor_grad_stats",
    "lora_update_stats",
    "lora_update_stats_projected",
    "project_directions",
    "project_file",
    "resolve_backend",
    "run_command",
    "score_file",
]
