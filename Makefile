# Two commands on a fresh machine: `make run` and `make test`. Everything else is set up here.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint setup mariadb clean bench-deps sanitize

setup: mariadb $(STAMP) tests/js/node_modules/.installed

# The JavaScript clients the tests drive (npm's @planetscale/database), from the lock file.
tests/js/node_modules/.installed: tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# System packages come first: a dev dependency (mysqlclient) builds against MariaDB headers.
$(STAMP): pyproject.toml setup.py $(wildcard src/selkie/proxy/*.[ch] src/selkie/proxy/pooler/*.[ch]) | mariadb
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

# The MariaDB server binaries the local compute driver runs (apt-get when missing and root).
mariadb:
	@scripts/ensure-mariadb.sh

run: setup
	$(VENV)/bin/selkie up

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy bench
	$(VENV)/bin/lint-imports

# Two workers on the two cores, each taking whole test files (module fixtures stay in one
# process): much of a test is waiting for mariadbd to start or stop, which the two overlap.
# PYTEST_WORKERS=0 runs it in this process.
PYTEST_WORKERS ?= 2
test: setup lint
	$(VENV)/bin/pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# Both C extensions once more with ASan and UBSan, into build/sanitize (the venv keeps its
# normal build), and their scanner and lane tests run against them: any report fails.
sanitize: $(STAMP)
	$(PY) scripts/sanitize.py

clean:
	rm -rf $(VENV) .selkie .pytest_cache .mypy_cache .ruff_cache tests/js/node_modules

# Benchmark tools (not needed by make test).
bench-deps:
	@command -v sysbench >/dev/null && command -v haproxy >/dev/null || \
	  (DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sysbench haproxy)
	cd bench/js && npm ci --no-audit --no-fund --loglevel=error
