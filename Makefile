# shopvault: `make run` to try it, `make test` to check it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck pytest bench clean fuzz soak e2e lock audit

# Every dependency, dev tools included, at the version and hashes of requirements.lock; then the
# project itself, editable, without resolving anything again.
$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/shopvault migrate
	$(BIN)/shopvault demo --if-new
	# The outbox worker runs beside the server, and stops with it.
	$(BIN)/shopvault worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker' EXIT INT TERM; \
	$(BIN)/shopvault serve --host 127.0.0.1 --port 8000

lint: install
	$(BIN)/ruff check app tests migrations bench
	$(BIN)/ruff format --check app tests bench

typecheck: install
	$(BIN)/mypy app

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

# The API fuzz test, deeper: more examples per operation, random seeds, both databases when
# SHOPVAULT_TEST_POSTGRES_URL is set (make test runs it with 15 and a fixed seed, on SQLite).
FUZZ_EXAMPLES ?= 300
fuzz: install
	SHOPVAULT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest tests/test_api_fuzz.py -q

# Mixed POS traffic for SOAK_SECONDS against `shopvault serve --workers 2` on a fresh PostgreSQL
# database (next to SHOPVAULT_TEST_POSTGRES_URL), loopback only; see tests/soak.py.
SOAK_SECONDS ?= 120
soak: install
	$(BIN)/python -m tests.soak --seconds $(SOAK_SECONDS)

# The pages in headless Chromium (Debian's chromium): /docs and /redoc under the CSP, the printable
# pages; screenshots under SHOPVAULT_E2E_ARTEFACTS (default: a new temporary directory).
e2e: install
	$(BIN)/pytest tests/e2e_browser.py -q -p no:cacheprovider

# After changing the dependencies in pyproject.toml: pin them again (for Python 3.11 on Linux).
lock: install
	$(BIN)/pip-compile --quiet --extra dev --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml

# Known vulnerabilities in the locked versions (pip-audit, PyPI's advisory data; --strict: a
# package it could not look up is a failure, not a pass). Not part of make test: a newly
# published advisory should not fail CI on its own.
audit: install
	$(BIN)/pip-audit --strict --require-hashes --disable-pip --progress-spinner off -r requirements.lock

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
