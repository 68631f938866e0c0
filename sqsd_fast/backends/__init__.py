"""Fast implementations of ``factor_grad_stats``; each module follows docs/CONTRACTS.md."""

# How to get the compiled backend; said by every message that reports it missing.
BUILD_HINT = "build it with `pip install --no-build-isolation -e .` (or `make test`) in the sqsd_fast checkout"
