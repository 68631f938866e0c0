"""Per-sample LoRA-gradient statistics for influence-style tools, and the paper's baselines.

    from sqsd_fast.influence import GradientStats
    stats = GradientStats(peft_model, tokenizer=tok)
    stats.self_stats(samples).grad_sqnorm          # TracIn self-influence
    q = stats.query_gradient(queries)              # mean LoRA gradient of a query set
    stats.query_scores(samples, q).query_cosine    # LESS-style cosine, (S, K)

A face on the engine (sqsd_fast/engine/: the batch runner, the reducers, the Kronecker
sketch maps), as SQSDScorer is. ``stats.py``: the object and its verbs; ``results.py``:
what a pass returns; ``factors.py``: query gradients and directions; ``inputs.py``: the
accepted samples, named by role; ``baselines.py``: length, random, self-inf, self-inf-n
and gradmatch as a RunScorer for the resumable run (``sqsd_fast.app.pipeline.baseline_file``).
"""
from sqsd_fast.influence.factors import QueryGradients
from sqsd_fast.influence.results import GradientResult
from sqsd_fast.engine.sketch import KroneckerMaps, sketch_maps
from sqsd_fast.influence.stats import GradientStats

__all__ = ["GradientResult", "GradientStats", "KroneckerMaps", "QueryGradients", "sketch_maps"]
