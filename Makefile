# Two set-up commands (README): `make demo` runs the main job, `make test` runs the tests.
# Each creates its own virtual environment in .venv and installs what it needs; torch is pinned to the local
# CPU build for these installs (the package itself declares a range, so GPU users keep their CUDA build).
# The dev extra pins triton (it declares no torch dependency, so the torch pin stands): the tests run the
# Triton Bi-WKV kernels in Triton's interpreter on the CPU.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
DEMO_OUT ?= demo_out
DEMO_ARGS ?=

.PHONY: venv test lint demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: lint
	$(PY) -m pytest -q

# The main job: prepare HC18 -> split by exam -> train med_urwkv_t -> evaluate -> predict -> report.
# It trains from scratch (the demo's pretrained: false, medurwkv.pipeline.DEMO_TRAINING): nothing is downloaded
# for the model, unlike `medurwkv train`, whose default loads the model's official release.
# Data: $$MEDURWKV_DATA/hc18 when MEDURWKV_DATA is set; otherwise pass DEMO_ARGS=--download to fetch the
# official archive (checksum-verified) on request.
demo: $(VENV)/.installed
	$(VENV)/bin/medurwkv demo --out $(DEMO_OUT) $(DEMO_ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_bi_wkv.py
	$(PY) benchmarks/bench_models.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
