# batchd developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# What the demo runs: batchd and its dependencies. The dev tools come on top, for lint and test.
RUN_STAMP := $(VENV)/.run.stamp
DEV_STAMP := $(VENV)/.dev.stamp
# Lint only the top-level folders that exist (bench/ and jobs/ may still be empty).
LINT_DIRS := $(wildcard batchd tests bench jobs)

.PHONY: test lint demo bench clean venv system-packages

venv: $(DEV_STAMP)

# Each re-installs only when pyproject.toml is newer than its stamp; the dev install also
# satisfies the demo's.
$(RUN_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev,dask,mysql]'
	touch $@ $(RUN_STAMP)

# Debian packages the tests run (PostgreSQL, promtool), installed as root when missing.
system-packages:
	@sh .ci/system-packages

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check $(LINT_DIRS)
	$(VENV)/bin/mypy batchd

# The tests run on as many pytest-xdist workers as the machine has cores (each worker starts
# its own database servers); a worker that is done takes tests queued for the other.
test: lint system-packages
	$(VENV)/bin/pytest -n auto --dist worksteal

demo: $(RUN_STAMP)
	$(PY) -m jobs.demo

bench: $(DEV_STAMP)
	$(PY) bench/chunk_throughput.py
	$(PY) bench/sql_throughput.py
	$(PY) bench/partition_speedup.py
	$(PY) bench/web_pages.py
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/file_import.py
	$(PY) bench/per_run.py --statements
	$(PY) bench/items_throughput.py
	$(PY) bench/ctl_latency.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
