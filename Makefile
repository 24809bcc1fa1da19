# Every target builds what it needs from nothing but a Python interpreter.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

BENCH  := $(VENV)/.bench-installed

.PHONY: test lint run check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff format --check esm_tasks tests docs_src bench
	$(BIN)/ruff check esm_tasks tests docs_src bench
	$(BIN)/mypy esm_tasks

check: lint test

run: $(STAMP)
	$(BIN)/python -m uvicorn docs_src.demo:app --host 127.0.0.1 --port 8000 --log-level info

$(BENCH): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH)

bench: $(BENCH)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build dist *.egg-info
