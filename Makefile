# batchd developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install.stamp
# Lint only the top-level folders that exist (bench/ and jobs/ may still be empty).
LINT_DIRS := $(wildcard batchd tests bench jobs)

.PHONY: test lint demo bench clean venv

venv: $(STAMP)

# Re-install only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev,dask]'
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_DIRS)
	$(VENV)/bin/mypy batchd

test: lint
	$(VENV)/bin/pytest

demo: $(STAMP)
	$(PY) -m jobs.demo

bench: $(STAMP)
	$(PY) bench/chunk_throughput.py
	$(PY) bench/sql_throughput.py
	$(PY) bench/partition_speedup.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
