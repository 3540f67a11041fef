# Two commands do all set-up: `make run` and `make test`. Each creates or refreshes .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,ray]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/mfpg-robot run-default

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check mfpg_robot hardware sim tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
