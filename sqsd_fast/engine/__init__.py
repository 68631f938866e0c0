"""The per-sample statistics engine: one batch runner, one family of reducers.

Both faces of the package sit on it: ``sqsd_fast.scoring`` (SQSD scores and projections)
and ``sqsd_fast.influence`` (gradient norms, query similarities, sketches, baselines).

- ``runner.py``: :class:`BatchRunner`, a batch through the model at one LoRA state (each
  sample's batch-1 gradient from one forward + backward), the model borrowed and given back
  (``model_state.py``), the results back to the host in one copy;
- ``batch_pass.py``: packing, the response-token loss (chunked LM head), length-bucketed
  batches; ``token_budget.py``: the default tokens per batch for a device;
- ``taps.py``: the hooks that hand each LoRA module's x, h, u, e to a reducer;
- ``reducers.py``: UpdateProjection (SQSD), GradientMoments (norms and queries),
  KroneckerSketch, GradientSum (the query side), Reducers (several in one pass);
- ``modules.py``: the per-module record (LoraModule); ``status.py``: the one status
  vocabulary; ``samples.py``: accepted inputs and their checks against the model;
  ``loading.py``: model, tokenizer, states and the padding rule for both faces;
  ``sketch.py``: Kronecker random projection maps.
"""
