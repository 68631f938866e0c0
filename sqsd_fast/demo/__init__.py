"""The demos behind `python -m sqsd_fast.demo` (`make demo`).

- ``real``: zero-configuration SQSD on SmolLM2-135M-Instruct (``run_real_demo``), the
  default: no adapter to train, the shipped anchor sets and a fresh LoRA state;
- ``toy``: the same loop on a random-weight toy model, offline (``--toy``, and the
  fallback when the real model cannot be fetched);
- ``demo_data``: ``DEMO_RECORDS``, the instructions both demos score, and the toy's
  adapter texts.

Nothing heavy is imported here; each module imports torch and friends when run.
"""
