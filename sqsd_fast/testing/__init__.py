"""Builders and assertions shared by the tests, the demo and the benchmarks.

Nothing here is needed to score data; it lives in the package (not under tests/) so that
the demo and the benchmarks build the same toy models and the tests share one set of
assertions. Import the submodules directly; this package imports nothing heavy.
"""
