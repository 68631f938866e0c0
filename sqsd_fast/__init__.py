"""sqsd_fast: fast, exact SQSD (sample-level quantification of safety degradation).

The package imports, and the float64 reference backend works, even when the compiled
extension is not built; ``backend="auto"`` then warns once and says how to build it.
"""

from sqsd_fast.api import (
    backend_available,
    direction_sqnorm,
    factor_grad_stats,
    lora_update_stats,
    lora_update_stats_projected,
    project_directions,
    resolve_backend,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    # The scorer pulls in transformers and peft; import it only when asked for, so that the
    # kernel ops stay cheap to import for tools that embed them.
    if name == "SQSDScorer":
        from sqsd_fast.scoring.scorer import SQSDScorer

        return SQSDScorer
    raise AttributeError(f"module 'sqsd_fast' has no attribute {name!r}")


def build_info() -> dict:
    """Facts about the compiled extension: built or not, CUDA compiled in, threads, version."""
    try:
        from sqsd_fast.backends import cpp
    except ImportError as error:
        return {"built": False, "error": str(error)}
    return cpp.build_info()


__all__ = [
    "SQSDScorer",
    "__version__",
    "backend_available",
    "build_info",
    "direction_sqnorm",
    "factor_grad_stats",
    "lora_update_stats",
    "lora_update_stats_projected",
    "project_directions",
    "resolve_backend",
]
