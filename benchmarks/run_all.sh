#!/usr/bin/env bash
# Full benchmark run on this machine, then regenerate BENCHMARKS.md's tables.
# Extra arguments (e.g. --threads 2) go to every script.
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/bench_kernels.py "$@"
python benchmarks/bench_e2e.py "$@"
python benchmarks/bench_per_sample.py "$@"
python benchmarks/bench_scaling.py "$@"
python benchmarks/make_report.py
