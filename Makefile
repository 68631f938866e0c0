# Quick start: `make demo` and `make test`. Both create .venv, install what is needed and
# build the extension first; nothing outside the repository is touched.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch that this project's machines install from a local file; on a CUDA
# machine override it, e.g. `make test TORCH_SPEC="torch==2.13.0 --index-url ..."`.
TORCH_SPEC ?= torch==2.13.0
MAX_JOBS ?= 2
DEPS_STAMP := $(VENV)/.deps-installed
BUILD_STAMP := $(VENV)/.extension-built
NATIVE_SOURCES := $(shell find csrc -type f 2>/dev/null) CMakeLists.txt setup.py pyproject.toml

.PHONY: demo test build deps cuda-check gpu-check lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(DEPS_STAMP): $(PY) requirements-dev.txt
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

deps: $(DEPS_STAMP)

$(BUILD_STAMP): $(DEPS_STAMP) $(NATIVE_SOURCES)
	MAX_JOBS=$(MAX_JOBS) $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	$(PY) -c "import sqsd_fast, json; print('sqsd_fast build:', json.dumps(sqsd_fast.build_info()))"
	touch $@

build: $(BUILD_STAMP)

# Compiles the CUDA sources with the local nvcc against torch's headers (no GPU needed, no
# linking), so a CUDA syntax or type error cannot land unseen. Skipped where nvcc is absent.
cuda-check: $(DEPS_STAMP)
	@if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then \
		$(VENV)/bin/cmake -S . -B build/cuda-check -G Ninja -DSQSD_FAST_CUDA_COMPILE_CHECK=ON \
			-DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" \
			-DPython_EXECUTABLE="$(abspath $(PY))" >/dev/null && \
		$(VENV)/bin/cmake --build build/cuda-check -j $(MAX_JOBS) && echo "cuda-check: CUDA sources compile"; \
	else echo "cuda-check: skipped (no nvcc on this machine)"; fi

# Everything that needs a GPU (benchmarks/gpu_check.py): the CUDA build, the gpu-marked tests
# and a short benchmark set, CSVs under results/gpu/<device>/. It runs with the
# python whose torch sees the GPU (.venv where it exists, else python3: a GPU image's own
# torch, no network needed); without a GPU it says so and exits 0.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py

lint: $(DEPS_STAMP)
	$(PY) -m ruff check .

test: build cuda-check lint
	SQSD_FAST_REQUIRE_EXTENSION=1 $(PY) -m pytest -q tests

demo: build
	$(PY) -m sqsd_fast.demo

clean:
	rm -rf build demo_output *.egg-info sqsd_fast/_C*.so $(BUILD_STAMP)
