"""The benchmarks (scripts, run as files: ``python benchmarks/bench_e2e.py``) and the
validation experiment (a package, run as ``python -m benchmarks.validation ROUND`` from the
repository root). What they measure goes to the top-level ``results/`` (``paths.py``)."""
