# Quick start: `make demo` and `make test`. Both create .venv if it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch is installed first and alone, pinned, so that nothing resolves a newer build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/kdlab demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile tests

test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow" tests

bench: $(STAMP)
	$(BIN)/kdlab bench

clean:
	rm -rf $(VENV) runs
