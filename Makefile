# Two commands do all the setup on a fresh machine:
#   make demo   install everything, then run the bundled examples end to end
#   make test   install everything, then run the tests
VENV ?= .venv
PYTHON ?= python3
UV ?= $(PYTHON) -m uv
BIN := $(VENV)/bin
export RBI_HOME ?= $(CURDIR)/.rbi

.PHONY: setup demo test lint bench clean

$(BIN)/.installed: pyproject.toml uv.lock
	$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --extra dev --python 3.11 --compile-bytecode
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/rbi sandbox check
	$(BIN)/rbi run examples/strategies/sma_cross.yaml examples/strategies/rsi_script.py examples/strategies/llm_answer.md
	$(BIN)/rbi run --fix examples/strategies/needs_fixes.py
	$(BIN)/rbi results --limit 10

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check operator tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/bench_execution.py --out benchmarks/results
	$(BIN)/python benchmarks/bench_speedups.py
	$(BIN)/python benchmarks/bench_optimize.py --out benchmarks/results
	$(BIN)/python benchmarks/bench_promotion.py --out benchmarks/results
	$(BIN)/python benchmarks/bench_loop.py --out benchmarks/results
	$(BIN)/python benchmarks/bench_operator.py --out benchmarks/results

clean:
	rm -rf $(VENV) .rbi .pytest_cache .mypy_cache .ruff_cache
