# The project's verbs. Each target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench bench-ci lint check clean llama-cpp

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## start the demo cluster and serve http://127.0.0.1:8080/inference-cluster/v1
	$(BIN)/python -m bench.cluster --spec bench/clusters/demo.toml

llama-cpp: $(STAMP)  ## build llama.cpp's server and libraries into ~/.cache, once per version
	PYTHON=$(BIN)/python bash bench/llamacpp/build.sh

test: $(STAMP) llama-cpp  ## lint, type-check and run the test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: $(STAMP)  ## validate the demo cluster's per-model capacity (results/bench/default/)
	$(BIN)/python -m bench run --scenario default

bench-ci: $(STAMP)  ## performance regression gate: ratios against references in the same run
	$(BIN)/python -m bench ci

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: test

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
