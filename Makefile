# KiCI orchestrator — developer entry points.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LOCK := requirements/dev.lock
LOCK_FLAGS := --universal --generate-hashes --python-version 3.11 --no-config \
	--index-url https://pypi.org/simple --custom-compile-command "make lock"

.PHONY: install lock test test-docker lint typecheck unit test-props dev bench clean screenshots

# Installs exactly what requirements/dev.lock names (versions and hashes), then the project itself
# (editable, no dependency resolution, built with the locked setuptools).
$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check kici_core kici_adapters kici_runtime tests bench tools
	$(BIN)/ruff check kici_core kici_adapters kici_runtime tests bench tools
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# Byte-compile our packages first: with PYTHONDONTWRITEBYTECODE set (common in containers) every program the
# suite starts (orchestrators, agents, kici-admin, processing children) would otherwise compile them anew.
test: lint typecheck
	@$(BIN)/python -m compileall -q -j 0 kici_core kici_adapters kici_runtime >/dev/null
	@$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# The auto-scaler against a real Docker engine (root, dockerd from docker.io, nft): not part of `make test`.
test-docker: $(STAMP)
	$(BIN)/python -m pytest -q -s -p no:cacheprovider tests/docker/real_engine_tier.py

# Recompute the lock files from pyproject.toml and requirements/*.in (UPGRADE=1 takes newer releases).
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml requirements/build.in requirements/tools.in --extra dev \
		$(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) -o requirements/dev.lock
	$(BIN)/uv pip compile pyproject.toml requirements/build.in --extra s3 \
		$(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) -o requirements/runtime.lock

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# The property-based tests with ten times their everyday example budgets (tests/support/props.py).
test-props: $(STAMP)
	TEST_PROPERTY_SCALE=10 $(BIN)/python -m pytest -q -p no:cacheprovider \
		$$(grep -rl --include='test_*.py' 'examples(' tests)

PORT ?= 4000
# pytest-xdist workers for `make test` (0 runs everything in one process). Most of the suite waits on real servers
# and agents, so two workers overlap the waiting: about 4.5 minutes on two cores (7 with two CPU hogs running)
# instead of over 6 in one process. Each worker has its own embedded PostgreSQL, ports and temp dirs;
# `--dist loadfile` keeps a file's tests (and its module-scoped orchestrators) on one worker.
TEST_WORKERS ?= 2
DEV_DIR ?= .kici-dev

# Ctrl-C, SIGTERM or SIGHUP stops everything it started (make passes SIGTERM on; see kici_runtime/orchestrator/devserver.py).
dev: $(STAMP)
	$(BIN)/python -m kici_runtime.orchestrator.devserver --port $(PORT) --dir $(DEV_DIR)

# The dashboard's browser test (headless Chromium) saves the screenshots docs/dashboard.md shows.
screenshots: $(STAMP)
	DASHBOARD_SCREENSHOTS=$(CURDIR)/docs/images $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/e2e/test_dashboard_browser.py

bench: $(STAMP)
	$(BIN)/python bench/matching.py

clean:
	rm -rf $(VENV) .kici-dev .mypy_cache .ruff_cache
