# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/sentinmail serve $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The suite in two phases: the tests marked serial (Ray, wall-clock bounds; see
# tests/conftest.py) alone on the machine, after the others on two xdist workers.
# Both phases run; either failing fails the target.
test: lint
	$(BIN)/pytest -m "not serial" -n 2; parallel=$$?; $(BIN)/pytest -m serial && exit $$parallel

# The benchmarks (each under 2 minutes, SQLite unless BENCH_ARGS says
# --database-url), then benchmarks/results/summary.png. See benchmarks/README.md.
bench: install
	$(BIN)/python -m benchmarks.throughput $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.isolation $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.priority $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.recovery $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.recovery --single $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.ingest $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.summary

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
