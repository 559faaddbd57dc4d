# airlock's two commands: `make demo` (the whole job, end to end, on the
# built-in authentik sample) and `make test`. Both install what they need:
# Debian packages and a running Docker engine and registry (scripts/services.sh),
# and a virtual environment with the Python dependencies (.venv).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REGISTRY := 127.0.0.1:5000
DEMO_DIR := demo
DEMO_KEY := $(DEMO_DIR)/keys/demo
DEMO_BUNDLE := dist/authentik-2026.2.2.airlock
DEMO_TARGET := $(DEMO_DIR)/target

.PHONY: demo test lint services standins venv clean-demo

$(BIN)/airlock-install: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/airlock-install

services:
	scripts/services.sh start

standins: services
	scripts/build-standins.sh --registry $(REGISTRY)

$(DEMO_KEY).key: venv
	$(BIN)/airlock-bundle keygen --out $(DEMO_DIR)/keys --name demo

# The demo keeps the installer's host-wide files (trust store, installed
# releases record, audit log) in its own folder instead of /etc and /var/log.
demo: export AIRLOCK_TRUST_STORE = $(CURDIR)/$(DEMO_DIR)/host/trust
demo: export AIRLOCK_HOST_RECORD = $(CURDIR)/$(DEMO_DIR)/host/installed.json
demo: export AIRLOCK_AUDIT_LOG = $(CURDIR)/$(DEMO_DIR)/host/audit.log
demo: venv standins $(DEMO_KEY).key
	$(BIN)/airlock-bundle build examples/authentik/bundle.yaml --key $(DEMO_KEY).key \
		--output $(DEMO_BUNDLE) --mirror docker.io=$(REGISTRY) --mirror ghcr.io=$(REGISTRY)
	$(BIN)/airlock-bundle inspect $(DEMO_BUNDLE)
	$(BIN)/airlock-install verify $(DEMO_BUNDLE) --key $(DEMO_KEY).pub
	$(BIN)/airlock-install install $(DEMO_BUNDLE) --target $(DEMO_TARGET) --key $(DEMO_KEY).pub
	$(BIN)/airlock-install status --target $(DEMO_TARGET)
	@echo "server on http://127.0.0.1:9000/ answers:"
	@curl -fsS http://127.0.0.1:9000/-/health/live/ && echo

# pytest exits 5 when it collected no test; that is a failure here too.
test: venv services
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check bundler installer schemas tests
	$(BIN)/mypy bundler installer schemas

bench: venv services ; $(BIN)/python bench/run.py $(BENCH_ARGS)

# The demo's .env (and its generated database password) goes with demo/, so
# the database volume goes too: a new password would not open the old data.
clean-demo:
	-[ ! -d $(DEMO_TARGET) ] || (cd $(DEMO_TARGET) && docker-compose down --volumes --remove-orphans)
	rm -rf $(DEMO_DIR) dist
