# Common Ground. `make run` starts the whole app; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)

# Tests run on the local PostgreSQL and Redis; override either with the environment.
TEST_DATABASE_URL ?= $(or $(DATABASE_URL),postgres://postgres@127.0.0.1:5432/commonground)
TEST_REDIS_URL ?= $(or $(REDIS_URL),redis://127.0.0.1:6379/0)

.PHONY: install run test lint migrations-check bench clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: install  ## Set up everything (SQLite, filesystem broker, bundled Gemma) and serve on :8000
	$(PY) manage.py migrate --noinput
	$(PY) manage.py setup_demo
	$(PY) manage.py prepare_models
	$(PY) manage.py serve

test: install  ## Full suite on local PostgreSQL + Redis (started if installed but down)
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) bash scripts/test-services.sh
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) CELERY_BROKER_URL=$(TEST_REDIS_URL) \
		$(PY) -m pytest $(PYTEST_ARGS)

lint: install  ## ruff, the import contracts (.importlinter) and mypy with django-stubs
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

migrations-check: install
	$(PY) manage.py makemigrations --check --dry-run

bench: install
	$(PY) bench/turn_overhead.py $(BENCH_ARGS)

clean:
	rm -rf var .pytest_cache
