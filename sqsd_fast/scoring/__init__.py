"""SQSD scoring, a face on the engine (sqsd_fast/engine/): the projection engine (``projection.py``:
the UpdateProjection reducer's precomputed directions and per-batch results) and the
``SQSDScorer`` API (``scorer.py``: loading states and directions, danger - safety)."""

from sqsd_fast.scoring.projection import BatchProjection, ProjectionEngine
from sqsd_fast.scoring.scorer import SQSDScorer

__all__ = ["BatchProjection", "ProjectionEngine", "SQSDScorer"]
