"""Settings for Common Ground, read from the environment.

Defaults give the embedded set-up `make run` uses: SQLite, kombu's filesystem transport and
the bundled Gemma model. Production differs only by environment variables, e.g.
``DATABASE_URL=postgres://...`` and ``CELERY_BROKER_URL=redis://...``.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from core.env import envbool, envfloat, envint

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("COMMONGROUND_VAR_DIR", BASE_DIR / "var"))


DEBUG = envbool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "dev-only-insecure-key-change-me")
if not DEBUG and SECRET_KEY.startswith("dev-only") and envbool("REQUIRE_SECRET_KEY", False):
    raise ImproperlyConfigured("SECRET_KEY must be set in production")
ALLOWED_HOSTS = os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",")
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    # The project's apps, lowest layer first (docs/architecture.md): admin modules load in this
    # order, so exports can extend annotate's StudyAdmin.
    "core",
    "workers",
    "annotate",
    "labeling",
    "exports",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "config.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

VAR_DIR.mkdir(parents=True, exist_ok=True)
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'commonground.sqlite3'}"),
        conn_max_age=envint("DB_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while a worker writes streamed tokens.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "annotate:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True

# --- Celery -------------------------------------------------------------------------------
# The broker, queues, routes, time limits and transport options are all in workers/celery_app.py
# (CELERY_BROKER_URL, CELERY_VISIBILITY_TIMEOUT and CELERY_TASK_ALWAYS_EAGER are read there).

# --- Exports ------------------------------------------------------------------------------
# Where exports requested in admin are written (one directory per export).
EXPORT_DIR = Path(os.environ.get("EXPORT_DIR") or VAR_DIR / "exports")
# A running export whose worker has reported no progress for this long may be taken over.
EXPORT_LEASE_SECONDS = envfloat("EXPORT_LEASE_SECONDS", 60.0)
# Processes that write one large export at once (runs of whole chunks, joined in order: the
# same file as one process). 1 writes everything in the calling process.
EXPORT_PROCESSES = envint("EXPORT_PROCESSES", min(os.cpu_count() or 1, 4))
# Conversations read per query round; memory per process grows with it, not with the study.
EXPORT_CHUNK_CONVERSATIONS = envint("EXPORT_CHUNK_CONVERSATIONS", 400)

# --- Generation ---------------------------------------------------------------------------
# A streaming turn whose worker has written nothing for this long may be taken over.
TURN_LEASE_SECONDS = envfloat("TURN_LEASE_SECONDS", 60.0)
# A redelivered turn whose worker died this many times is marked failed instead of tried again.
TURN_MAX_CRASHES = envint("TURN_MAX_CRASHES", 3)
# How often the SSE view looks for new tokens.
STREAM_POLL_SECONDS = envfloat("STREAM_POLL_SECONDS", 0.05)
# How long one SSE connection stays open before the browser reconnects.
STREAM_MAX_SECONDS = envfloat("STREAM_MAX_SECONDS", 600.0)
# Where converted model weights are cached (GGUF → safetensors: ~75 s → ~5 s per load).
# Shared by every checkout of the user, so a fresh clone does not convert again.
_XDG_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
MODEL_CACHE_DIR = Path(os.environ.get("MODEL_CACHE_DIR") or _XDG_CACHE / "commonground" / "models")
# Load these model configs (by name, comma separated) when a worker process starts.
WORKER_PRELOAD_MODELS = os.environ.get("WORKER_PRELOAD_MODELS", "")
# Threads per worker process: one each suits a small model with one process per core.
TORCH_NUM_THREADS = envint("TORCH_NUM_THREADS", 1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
