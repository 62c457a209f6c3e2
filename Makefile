# Common Ground. `make run` starts the whole app; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)

# Tests run on the local PostgreSQL and Redis; override either with the environment.
TEST_DATABASE_URL ?= $(or $(DATABASE_URL),postgres://postgres@127.0.0.1:5432/commonground)
TEST_REDIS_URL ?= $(or $(REDIS_URL),redis://127.0.0.1:6379/0)

# With DEBUG off Django refuses to start without SECRET_KEY (config/settings.py). Unless SECRET_KEY is
# set, the targets that start Django use a key generated once and kept in $(SECRET_KEY_FILE) (mode 600).
# The tests set their own (pytest.ini).
VAR_DIR := $(or $(COMMONGROUND_VAR_DIR),var)
SECRET_KEY_FILE := $(VAR_DIR)/secret_key
WITH_KEY = SECRET_KEY="$${SECRET_KEY:-$$(cat $(SECRET_KEY_FILE))}"

.PHONY: install run test lint migrations-check bench clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

$(SECRET_KEY_FILE):
	@mkdir -p $(@D)
	@(umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))' > $@.tmp) && mv $@.tmp $@
	@echo "Generated the secret key in $@ (kept for later runs; SECRET_KEY=... overrides it)"

# setup_demo creates what is missing and keeps admin edits; `manage.py setup_demo --reset` puts the demo back as
# shipped. prepare_models says "first time: 1-2 minutes" only while the model still has to be converted.
run: install $(SECRET_KEY_FILE)  ## Set up everything (SQLite, filesystem broker, bundled Gemma) and serve on :8000
	$(WITH_KEY) $(PY) manage.py migrate --noinput
	$(WITH_KEY) $(PY) manage.py setup_demo
	$(WITH_KEY) $(PY) manage.py prepare_models
	$(WITH_KEY) $(PY) manage.py serve

test: install  ## Full suite on local PostgreSQL + Redis (started if installed but down)
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) bash scripts/test-services.sh
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) CELERY_BROKER_URL=$(TEST_REDIS_URL) \
		$(PY) -m pytest $(PYTEST_ARGS)

lint: install $(SECRET_KEY_FILE)  ## ruff, the import contracts (.importlinter) and mypy with django-stubs
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(WITH_KEY) $(VENV)/bin/mypy

migrations-check: install $(SECRET_KEY_FILE)
	$(WITH_KEY) $(PY) manage.py makemigrations --check --dry-run

bench: install
	$(PY) bench/turn_overhead.py $(BENCH_ARGS)

clean:
	rm -rf var .pytest_cache
