# Quick start: `make demo` and `make test`. Both create .venv if it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast install bench llm-study clean

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

# The built-in LLM study (docs/llm.md): its four configs in order in one store; the first trains
# the tokenizer and the teacher, the others reuse them by key. Each fits 10 minutes on 2 cores.
llm-study: $(STAMP)
	for c in configs/llm/[1-4]_*.yaml; do $(BIN)/kdlab run $$c || exit 1; done

clean:
	rm -rf $(VENV) runs
