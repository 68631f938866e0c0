"""The authors' SQSD projection (dense, batch 1): the baseline the benchmarks time.

It lives in ``sqsd_fast.testing.dense_reference`` so that the tests check the scorer
against the very code the benchmarks time; this module keeps the benchmarks' import path.
"""

from sqsd_fast.testing.dense_reference import AuthorsProjection, authors_project, lora_modules

__all__ = ["AuthorsProjection", "authors_project", "lora_modules"]
