# Two entry points for a fresh machine (Python 3.11 with venv):
#   make run    set up .venv, start a broker (Apache Kafka where Java 17+ is found, else Tansu),
#               the order service and the worker (scripts/dev-run)
#   make test   set up .venv (and PostgreSQL, Prometheus from Debian if missing), run every test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup run test test-unit bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# exec: dev-run replaces the recipe's shell, so the SIGTERM make forwards to its recipe
# reaches dev-run, which stops the broker, the order service and the worker.
run: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" exec ./scripts/dev-run

test: setup
	./scripts/ensure-system-packages
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest tests/unit

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $@

# Side-by-side benchmarks on the embedded broker: bench/results/<date>.json, docs/benchmarks.md
bench: $(VENV)/.bench-installed
	$(PY) -m bench
