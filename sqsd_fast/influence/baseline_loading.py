"""The scorer of a baseline run, loaded only as far as the method needs.

``sqsd_fast.pipeline.run`` does the run itself: ``BaselineOptions`` gives it its own
``COLUMNS`` and ``load_scorer`` (this module); everything else (checks, sidecars, lock,
run record, resume) is the pipeline's, as for ``score``.
"""
from __future__ import annotations

from sqsd_fast.influence.baselines import BaselineOptions, BaselineScorer, GRADIENT_METHODS


def load_baseline_scorer(options: BaselineOptions, tokenizer=None) -> BaselineScorer:
    """The model, the state and the anchors' gradients, only for the gradient methods.
    ``tokenizer``: the run's (default: loaded from --tokenizer or --model, as ``prepare``)."""
    if options.method not in GRADIENT_METHODS:
        return BaselineScorer(options)
    from sqsd_fast.data.records import read_records
    from sqsd_fast.data.tokenize import load_tokenizer, tokenize_records
    from sqsd_fast.influence.stats import GradientStats
    from sqsd_fast.models import resolve_model
    from sqsd_fast.pipeline import quiet_libraries

    if tokenizer is None:
        tokenizer = load_tokenizer(options.tokenizer or resolve_model(options.model, progress=options.progress),
                                   option="--tokenizer")

    with quiet_libraries():
        stats = GradientStats.from_pretrained(
            options.model, options.state, tokenizer=tokenizer, dtype=options.dtype, device=options.device,
            backend=options.backend, batch_size=options.batch_size, max_tokens=options.max_tokens,
            max_length=options.max_length)
    queries = None
    if options.method == "gradmatch":
        queries = []
        for name in ("harmful_anchors", "safe_anchors"):
            path = getattr(options, name)
            if path is None:
                continue
            label = f"--{name.replace('_', '-')} {path}"
            try:
                records = read_records(path, options.field_names())
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from None
            anchors = tokenize_records(records, tokenizer, max_length=options.max_length)
            queries.append(stats.query_gradient(anchors, reduce="mean", normalize=True, label=label,
                                                response_tokens=options.loss_response_tokens))
    return BaselineScorer(options, stats, queries)
