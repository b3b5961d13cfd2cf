# The targets the README and .ci/run call. The venv is built here, so a fresh machine needs only python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo demo-cluster test lint bench bench-full clean

$(BIN)/streamsend: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

venv: $(BIN)/streamsend

## demo: stream a sample campaign through the built-in emulator and print the summary
demo: venv
	$(BIN)/streamsend demo

## demo-cluster: enqueue a sample into the local Redis, run 3 workers, kill one mid-run
demo-cluster: venv
	$(BIN)/streamsend demo --workers 3

## test: lint, then the whole test suite (what CI runs: .ci/run)
test: lint
	$(BIN)/pytest -q

## lint: ruff and mypy --strict
lint: venv
	$(BIN)/ruff check streamsend tests benchmarks
	$(BIN)/ruff format --check streamsend tests benchmarks
	$(BIN)/mypy

## bench: quick benchmarks (under a minute or two); bench-full: the long runs
bench: venv
	$(BIN)/python -m benchmarks --quick

bench-full: venv
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
