"""Scoring: adapters (states and directions), capture hooks, the engine and the SQSDScorer API."""

from sqsd_fast.scoring.engine import BatchProjection, ProjectionEngine
from sqsd_fast.scoring.scorer import SQSDScorer

__all__ = ["BatchProjection", "ProjectionEngine", "SQSDScorer"]
