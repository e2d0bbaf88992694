# `make run` serves the API on :8000 (embedded PostgreSQL and Redis unless DATABASE_URL/REDIS_URL are set).
# `make test` runs lint, types and the tests (this machine's services when LEDGERX_TEST_*_URL are set).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run demo test lint typecheck pytest schema sdk screenshots bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Stamps make a re-run a no-op until pyproject.toml changes.
$(VENV)/.installed-run: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml sdk/python/pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev]" -e "sdk/python[dev]"
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(VENV)/bin/ledgerx serve --host $(HOST) --port $(PORT)

# A demo project (wallets, usage, billing rules, a plan) in the same data; prints how to sign in.
demo: $(VENV)/.installed-run
	$(VENV)/bin/ledgerx demo

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict sdk/python/ledgerx_client sdk/python/generate.py

# The TypeScript SDK's packages (tests/test_sdk_typescript.py skips, saying why, without node and npm).
SDK_TS := sdk/typescript
$(SDK_TS)/node_modules/.package-lock.json: $(SDK_TS)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then cd $(SDK_TS) && npm ci --no-audit --no-fund --silent; \
	else echo "npm is missing: the TypeScript SDK tests will be skipped"; fi

pytest: $(VENV)/.installed-dev $(SDK_TS)/node_modules/.package-lock.json
	@scripts/ensure-chromium.sh  # the console's browser tests need Debian's chromium; they skip without one
	@scripts/ensure-pgbouncer.sh  # the PgBouncer test needs Debian's pgbouncer; it skips without one
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

schema: $(VENV)/.installed-dev
	$(VENV)/bin/ledgerx export-schema -o schema.graphql

# The client SDKs, regenerated from schema.graphql and sdk/operations/*.graphql (tests fail on drift).
sdk: $(VENV)/.installed-dev $(SDK_TS)/node_modules/.package-lock.json
	$(PY) sdk/python/generate.py
	cd $(SDK_TS) && npm run generate && npm run build

# docs/screenshots/*.png: every console page in headless chromium (a scratch database, the demo data).
screenshots: $(VENV)/.installed-dev
	@scripts/ensure-chromium.sh
	$(PY) scripts/screenshots.py

bench: $(VENV)/.installed-dev
	$(PY) bench/graphql_overhead.py

clean:
	rm -rf $(VENV) .ledgerx .mypy_cache .ruff_cache .pytest_cache
