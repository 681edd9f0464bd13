# RestMQ developer commands. Each target sets up what it needs on a machine that
# has only Python 3.11+: uv is bootstrapped into .uv-bootstrap when it is missing.

PYTHON ?= python3
VENV := .venv
BOOTSTRAP := .uv-bootstrap
UV := $(or $(shell command -v uv 2>/dev/null),$(BOOTSTRAP)/bin/uv)
STAMP := $(VENV)/.restmq-installed
ARGS ?=
CLUSTER_BASE_PORT ?= 7000

.PHONY: install run run-cluster test test-programs lint format docs bench soak clean

install: $(STAMP)

$(BOOTSTRAP)/bin/uv:
	$(PYTHON) -m venv $(BOOTSTRAP)
	$(BOOTSTRAP)/bin/pip install --quiet --disable-pip-version-check uv

$(STAMP): pyproject.toml uv.lock setup.py | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

run: install
	exec $(VENV)/bin/twistd --nodaemon --pidfile= restmq $(ARGS)

# A local Valkey Cluster (3 primaries, 3 replicas, on ports from CLUSTER_BASE_PORT, data in
# a temporary directory) and a broker on it; Ctrl-C stops the broker, then the cluster.
run-cluster: install
	exec $(VENV)/bin/python -m restmq.runtime.run_cluster --base-port $(CLUSTER_BASE_PORT) -- $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Some tests run chromium, chromedriver and curl: installed here when missing, as root on
# Debian/Ubuntu; elsewhere those tests are skipped, saying what to install.
test-programs:
	@tests/install-programs.sh

# The manual (docs/, Sphinx): every warning is an error, so `make test` (and CI) keeps it whole.
docs: install
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

test: lint test-programs docs
	$(VENV)/bin/pytest $(ARGS)

bench: install
	$(VENV)/bin/python -m bench $(ARGS)

# Ten minutes of mixed load on one broker, watched minute by minute (not part of `make test`).
soak: install
	$(VENV)/bin/python -m bench.soak $(ARGS)

clean:
	rm -rf $(VENV) $(BOOTSTRAP) restmq-data docs/_build .pytest_cache .ruff_cache
