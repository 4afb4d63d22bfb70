# Two commands do all set-up: `make demo` and `make test`. Everything installs from uv.lock.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
export UV_LINK_MODE := copy

.PHONY: demo test install install-dev lint bench bench-segments bench-segments-l test-topology clean

$(UV):
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 not found; install python3.11 (with venv and pip) and retry" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "error: $(PYTHON) is not Python 3.11; run: make PYTHON=/path/to/python3.11 ..." >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { echo "error: could not create $(VENV); on Debian/Ubuntu install python3.11-venv" >&2; exit 1; }
	@$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

install: $(UV)
	@$(UV) sync --frozen --no-dev --inexact --quiet

install-dev: $(UV)
	@$(UV) sync --frozen --quiet

demo: install
	@$(VENV)/bin/audiences demo || { echo "error: the demo failed; the messages above say which step and what to fix" >&2; exit 1; }

test: install-dev lint
	@$(VENV)/bin/pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 0; fi; exit $$rc

lint: install-dev
	@$(VENV)/bin/ruff check --quiet tasks dags tests bench
	@$(VENV)/bin/ruff format --check --quiet tasks dags tests bench
	@$(VENV)/bin/mypy

bench: install-dev
	$(VENV)/bin/python -m bench.run
	$(VENV)/bin/python -m bench.segments_bench --size S
	$(VENV)/bin/python -m bench.sync_bench
	$(VENV)/bin/python -m bench.hashing_bench
	$(VENV)/bin/python -m bench.dag_parse

# The docker-compose topology without Docker (PostgreSQL + Redis + scheduler, DAG processor,
# API server and a Celery worker as processes); also part of `make test`.
test-topology: install-dev
	$(VENV)/bin/pytest tests/integration/test_celery_topology.py -s

# Segment engine (issue 4): features vs pandas and a hand-written DuckDB floor, segments, membership diff.
# Data is generated once per size under var/bench/data/<size>/ (M is about 2.4 GB, L about 12 GB).
bench-segments: install-dev
	$(VENV)/bin/python -m bench.segments_bench --size S
	$(VENV)/bin/python -m bench.segments_bench --size M

# pandas is left out at L: it peaks near 5 GiB at M and would need about 25 GiB for 5x the rows.
bench-segments-l: install-dev
	$(VENV)/bin/python -m bench.segments_bench --size L --only floor product check segments diff

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
