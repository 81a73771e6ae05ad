# ddsync — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KAFKA := $(PYTHON) deploy/kafka/localkafka.py
PYTEST_ARGS ?=

.PHONY: help install test lint bench chaos kafka-up kafka-down kafka-fetch run clean

help:
	@echo "make run        local Kafka + DotDigital sandbox + ddsync + a demo stream (Ctrl-C stops all)"
	@echo "make test       install into $(VENV), start a local broker unless KAFKA_BOOTSTRAP_SERVERS is set, run pytest"
	@echo "make lint       ruff and mypy --strict"
	@echo "make bench      benchmarks B1-B6 (own broker unless KAFKA_BOOTSTRAP_SERVERS is set); BENCH_ARGS='--only B2 --repeat 3 --ddsync-src PATH'"
	@echo "make chaos      the chaos run (own broker, restarted): 50,000 transitions under kills and faults; CHAOS_ARGS='--seed N --records N'"
	@echo "make kafka-up   start the local broker in the background; make kafka-down stops it"

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# Manifest validation (tests/deploy): kubeconform, built with Go from the module proxy.
	GOBIN=$(abspath $(VENV))/bin go install github.com/yannh/kubeconform/cmd/kubeconform@v0.7.0
	touch $@

install: $(VENV)/.installed

# The broker is started for pytest's lifetime and stopped afterwards, also when tests fail.
test: install
	$(KAFKA) run -- $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check stream tests deploy benchmarks
	$(VENV)/bin/ruff format --check stream tests deploy benchmarks
	$(VENV)/bin/mypy

# Benchmarks, not tests: a table of figures and .ddsync/bench/results-<UTC time>.json.
# BENCH_ARGS passes options (python -m benchmarks --help), e.g. --only B1,B3 --repeat 3.
BENCH_ARGS ?=
bench: install
	$(KAFKA) run -- env PYTHONPATH=$(CURDIR) $(PY) -m benchmarks $(BENCH_ARGS)

# The chaos run starts a broker of its own (it restarts it), whatever KAFKA_BOOTSTRAP_SERVERS
# says; a figure table and .ddsync/chaos/<UTC time>-seed<N>/ (report.json and every log).
CHAOS_ARGS ?=
chaos: install
	env PYTHONPATH=$(CURDIR) $(PY) -m tests.chaos $(CHAOS_ARGS)

# The broker (unless KAFKA_BOOTSTRAP_SERVERS is set), the sandbox, ddsync and a demo stream.
run: install
	$(KAFKA) run -- env PY=$(PY) bash deploy/demo/run.sh

kafka-fetch:
	$(KAFKA) fetch

kafka-up:
	$(KAFKA) up

kafka-down:
	$(KAFKA) down

clean:
	rm -rf $(VENV) .ddsync build *.egg-info .mypy_cache .ruff_cache .pytest_cache
