# Two entry points on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo fleet-demo test lint typecheck unit slow clean mutate fast arch bench-compare

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# Fleet mode on one machine: a throwaway PostgreSQL, two workers, one SIGKILLed (README).
fleet-demo: $(STAMP)
	$(BIN)/python examples/fleet_demo.py

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks tools
	$(BIN)/ruff format --check src tests examples benchmarks tools

typecheck: $(STAMP)
	$(BIN)/mypy

# Tests run on $(TEST_WORKERS) processes (pytest-xdist); TEST_WORKERS=0 runs them in this one.
TEST_WORKERS ?= 3
unit: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal

test: lint typecheck arch unit

# The edit-test loop: the pure core and the store, no servers, no daemon (seconds).
fast: $(STAMP)
	$(BIN)/pytest -q -x tests/protocol tests/store

# The layer contracts (pyproject's [tool.importlinter]) and the size, complexity and
# import-cycle ceilings of ARCHITECTURE.md.
arch: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python tools/check_architecture.py

slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# Benchmarks against curl, wget, aria2c and pypdl (installs nginx/aria2 with apt, pypdl with
# pip, if missing): W1, W2, W4 in run.py, then W3 (100 000 queued) and W5 (segments).
# BENCH_ARGS=--quick W3_TASKS=10000 for a smoke run; see benchmarks/README.md.
W3_TASKS ?= 100000
bench: $(STAMP)
	$(BIN)/pytest -q benchmarks/test_bench_smoke.py
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/w3_queue.py $(W3_TASKS) | tee benchmarks/results/w3.json
	$(BIN)/python benchmarks/w5_segments.py --json | tee benchmarks/results/w5.json

# Before/after of two git revisions, W1 and W2 alternated in one run (benchmarks/README.md):
# make bench-compare BEFORE=main AFTER=HEAD COMPARE_ARGS='--rounds 7 --tls --json'
BEFORE ?= main
AFTER ?= HEAD
bench-compare: $(STAMP)
	$(BIN)/python benchmarks/compare.py --before $(BEFORE) --after $(AFTER) $(COMPARE_ARGS)

# Mutation testing of the pure core (issue 20): every mutant of src/bgtransfer/_protocol/
# against tests/protocol (config in pyproject's [tool.mutmut]), then the score per module.
# Not part of `make test` (about 15 min on 2 busy cores). MUTANTS='bgtransfer._protocol._ranges*'
# runs one module's mutants; MUTATE_FAIL_UNDER fails the target below that score.
MUTATE_WORKERS ?= 2
MUTATE_FAIL_UNDER ?= 90
MUTANTS ?=
mutate: $(STAMP)
	rm -rf mutants
	nice -n 10 $(BIN)/mutmut run --max-children $(MUTATE_WORKERS) $(MUTANTS) > .mutmut.log 2>&1 \
		|| (tail -n 40 .mutmut.log; exit 1)
	$(BIN)/python tools/mutation_score.py --fail-under $(MUTATE_FAIL_UNDER)

clean:
	rm -rf mutants .mutmut.log $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache .hypothesis
