"""Settings for Common Ground, read from the environment.

Defaults give the embedded set-up `make run` uses: SQLite, kombu's filesystem transport and
the bundled Gemma model, plain http on localhost. Production differs only by environment variables, e.g.
``DATABASE_URL=postgres://...``, ``CELERY_BROKER_URL=redis://...`` and the HTTPS settings (README,
"Production"). ``SECRET_KEY`` has no default unless ``DEBUG=1``: `make run` passes a generated one.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from core.env import envbool, envfloat, envint, envlist

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("COMMONGROUND_VAR_DIR", BASE_DIR / "var"))


DEBUG = envbool("DEBUG", False)
# No usable default key: a known key lets anyone forge sessions and password-reset tokens. With DEBUG
# off the app refuses to start without SECRET_KEY. `make run` generates one once into var/secret_key;
# the tests set their own (pytest.ini); DEBUG=1 falls back to a development key.
_PUBLIC_KEYS = {"django-insecure-development-key-for-DEBUG-only", "dev-only-insecure-key-change-me"}
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if DEBUG and not SECRET_KEY:
    SECRET_KEY = "django-insecure-development-key-for-DEBUG-only"
elif not DEBUG and (not SECRET_KEY or SECRET_KEY in _PUBLIC_KEYS):
    raise ImproperlyConfigured(
        "SECRET_KEY is not set (or is a published development key) and DEBUG is off. Set SECRET_KEY to a long "
        "random value kept secret, e.g. SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))'), "
        "the same on every web and worker process; or DEBUG=1 on a development machine. `make run` does this for "
        "you (the key is kept in var/secret_key)."
    )

# --- HTTPS and hosts ----------------------------------------------------------------------
# The defaults suit the embedded set-up (plain http on localhost); the README's "Production"
# section sets them all for a site behind HTTPS (`manage.py check --deploy` then reports nothing).
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", False)
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
# Behind a proxy that terminates TLS: "HTTP_X_FORWARDED_PROTO,https" (the header the proxy sets, and
# its value for https). Only when the proxy always sets (or strips) that header.
_proxy_ssl_header = envlist("SECURE_PROXY_SSL_HEADER", [])
if _proxy_ssl_header and len(_proxy_ssl_header) != 2:
    raise ImproperlyConfigured("SECURE_PROXY_SSL_HEADER must be HEADER,VALUE, e.g. HTTP_X_FORWARDED_PROTO,https")
SECURE_PROXY_SSL_HEADER = (_proxy_ssl_header[0], _proxy_ssl_header[1]) if _proxy_ssl_header else None
# Proxies in front of the app that append to X-Forwarded-For (0: use the connection's address). The
# client address is what login throttling counts failures by.
TRUSTED_PROXY_COUNT = envint("TRUSTED_PROXY_COUNT", 0)
# How long `serve`'s web server keeps an idle keep-alive connection (uvicorn's own default is 5 s). It must outlast
# the client's idle time (a rater thinking, a proxy's upstream pool), so the client always closes first: a server
# that closes a socket just as a request is sent on it drops that request ("HTTP 0", an empty reply).
WEB_KEEPALIVE_SECONDS = envint("WEB_KEEPALIVE_SECONDS", 75)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "axes",
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
    "core.middleware.FreshPagesMiddleware",
    # No free database connection (pool timeout, server restarting): 503 with Retry-After, not a 500.
    "core.middleware.DatabaseUnavailableMiddleware",
    # Last, as django-axes asks: turns a locked-out login into the lock-out page.
    "axes.middleware.AxesMiddleware",
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
# PostgreSQL: each process draws its connections from a pool (Django's, psycopg-pool) of at most
# DB_POOL_MAX_SIZE, so a web process holds that many connections however many requests it serves; a
# request that waits DB_POOL_TIMEOUT seconds for one is answered 503 with Retry-After
# (core.middleware.DatabaseUnavailableMiddleware). `serve` checks that web processes × DB_POOL_MAX_SIZE plus
# the workers fit in max_connections (README, "Production"). DB_POOL=0: one connection per thread, unbounded.
DB_POOL = envbool("DB_POOL", True)
DB_POOL_MIN_SIZE = envint("DB_POOL_MIN_SIZE", 1)
DB_POOL_MAX_SIZE = envint("DB_POOL_MAX_SIZE", 4)
DB_POOL_TIMEOUT = envfloat("DB_POOL_TIMEOUT", 10.0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and DB_POOL:
    if DATABASES["default"]["CONN_MAX_AGE"]:
        raise ImproperlyConfigured(
            "DB_CONN_MAX_AGE keeps connections per thread, which the connection pool replaces: unset it, "
            "or set DB_POOL=0 to turn the pool off."
        )
    if not 0 <= DB_POOL_MIN_SIZE <= DB_POOL_MAX_SIZE or DB_POOL_MAX_SIZE < 1 or DB_POOL_TIMEOUT <= 0:
        raise ImproperlyConfigured(
            "The connection pool needs 0 <= DB_POOL_MIN_SIZE <= DB_POOL_MAX_SIZE, DB_POOL_MAX_SIZE >= 1 and "
            f"DB_POOL_TIMEOUT > 0 (now {DB_POOL_MIN_SIZE}, {DB_POOL_MAX_SIZE}, {DB_POOL_TIMEOUT})."
        )
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": DB_POOL_MIN_SIZE,
        "max_size": DB_POOL_MAX_SIZE,
        "timeout": DB_POOL_TIMEOUT,
    }
    # A pooled connection is checked before it is handed out, so one left dead by a database restart is
    # replaced instead of failing the request.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while a worker writes streamed tokens.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes first: it refuses a locked-out username + address before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Login throttling (django-axes; attempts are kept in the database, shared by every web process):
# LOGIN_FAILURE_LIMIT failed logins for one username from one address lock that pair out for
# LOGIN_LOCKOUT_MINUTES (0: until staff delete the attempt in admin → Axes, or `manage.py axes_reset`).
AXES_ENABLED = envbool("LOGIN_THROTTLING", True)
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5)
_lockout_minutes = envfloat("LOGIN_LOCKOUT_MINUTES", 15)
AXES_COOLOFF_TIME = dt.timedelta(minutes=_lockout_minutes) if _lockout_minutes > 0 else None
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "core.http.login_locked_out"
AXES_CLIENT_IP_CALLABLE = "core.http.client_ip"
AXES_VERBOSE = False  # failures and lock-outs are still logged (warnings); not the start-up banner
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

# --- Cache and rate limits ---------------------------------------------------------------
# The per-rater rate limits count in this cache. Local memory is per process: with several web
# processes (or machines) set CACHE_URL to a Redis shared by all of them, or each counts on its own.
CACHE_URL = os.environ.get("CACHE_URL") or os.environ.get("REDIS_URL") or "locmem://"
if CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": "commonground",
        }
    }
    # Sessions are read from Redis and written through to the database: every request reads its session,
    # and a Redis GET costs a fraction of a PostgreSQL query. A per-process cache could serve another
    # process's stale session (a logout not seen), so with locmem they stay in the database alone.
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
elif CACHE_URL == "locmem://":
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    raise ImproperlyConfigured(f"CACHE_URL must be redis://…, rediss://…, unix://… or locmem://, not {CACHE_URL!r}")
# Actions per rater per minute (0: no limit); more are refused with 429 and Retry-After
# (core/ratelimit.py). Generous: a person never reaches them, a runaway script does.
RATE_LIMITS = {
    "messages": envint("RATE_LIMIT_MESSAGES", 20),  # messages sent (each starts K generations)
    "votes": envint("RATE_LIMIT_VOTES", 60),  # votes, live and in the review pass
    "tags": envint("RATE_LIMIT_TAGS", 300),  # tags added or removed, suggestions decided
    # Study-link entries (/p/<slug>/) per client address: each may make an account. Participants behind one
    # address (a lab, a campus NAT) share it, hence generous.
    "panel_entries": envint("RATE_LIMIT_PANEL_ENTRIES", 60),
}

# --- Celery -------------------------------------------------------------------------------
# The broker, queues, routes, time limits and transport options are all in workers/celery_app.py
# (CELERY_BROKER_URL, CELERY_VISIBILITY_TIMEOUT and CELERY_TASK_ALWAYS_EAGER are read there).

# --- Imports ------------------------------------------------------------------------------
# Largest scenario or taxonomy file accepted through admin, checked before the file is read (Django's
# DATA_UPLOAD_MAX_MEMORY_SIZE and FILE_UPLOAD_MAX_MEMORY_SIZE do not cap the size of an uploaded file).
IMPORT_MAX_BYTES = envint("IMPORT_MAX_BYTES", 5 * 1024 * 1024)

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

# --- Dashboards ---------------------------------------------------------------------------
# A study dashboard shows stored figures (labeling.DashboardSnapshot); viewing one older than this asks a worker
# to compute them again.
DASHBOARD_MAX_AGE_SECONDS = envint("DASHBOARD_MAX_AGE_SECONDS", 60)

# --- Generation ---------------------------------------------------------------------------
# A streaming turn whose worker has written nothing for this long may be taken over.
TURN_LEASE_SECONDS = envfloat("TURN_LEASE_SECONDS", 60.0)
# Dynamic batching (transformers configs): a worker samples up to this many waiting replies of the same model
# and parameters in one generate call (annotate.generation._riders_claim). 1 turns it off.
GENERATION_BATCH_SIZE = envint("GENERATION_BATCH_SIZE", 8)
# A redelivered turn whose worker died this many times is marked failed instead of tried again.
TURN_MAX_CRASHES = envint("TURN_MAX_CRASHES", 3)
# Live updates of streaming replies (annotate/live.py): workers publish on this Redis, each web process
# subscribes once and fans out to its streams. Empty (the embedded SQLite set-up): streams poll the rows.
_BROKER = os.environ.get("CELERY_BROKER_URL", "")
_REDIS_BROKER = _BROKER if _BROKER.startswith(("redis://", "rediss://")) else ""
STREAM_REDIS_URL = os.environ.get("STREAM_REDIS_URL", os.environ.get("REDIS_URL") or _REDIS_BROKER)
# A worker sends a streaming reply's text to the rater at most this often (publishes it with a feed, else
# writes the row the streams poll); the finish always.
STREAM_WRITE_SECONDS = envfloat("STREAM_WRITE_SECONDS", 0.1)
# With a feed, the row itself (text and the lease's heartbeat) is written once per this many seconds, at most a
# quarter of TURN_LEASE_SECONDS whatever this says (the save keeps the lease).
STREAM_SAVE_SECONDS = envfloat("STREAM_SAVE_SECONDS", 1.0)
# How often a stream without a feed looks for new tokens.
STREAM_POLL_SECONDS = envfloat("STREAM_POLL_SECONDS", 0.05)
# A stream with nothing to say sends a comment this often (proxies and browsers keep it open) ...
STREAM_KEEPALIVE_SECONDS = envfloat("STREAM_KEEPALIVE_SECONDS", 15.0)
# ... reads a waiting reply's place in the queue this often ...
STREAM_QUEUE_SECONDS = envfloat("STREAM_QUEUE_SECONDS", 5.0)
# ... and reads its rows again after this long without news (pub/sub drops what it could not deliver).
STREAM_RESYNC_SECONDS = envfloat("STREAM_RESYNC_SECONDS", 30.0)
# The recovery sweep (annotate.services.turns_recover; how often: workers/celery_app.py): how long a reply
# may wait in the queue (PENDING) before its task is sent again (a lost message; a duplicate is harmless).
PENDING_REQUEUE_SECONDS = envfloat("PENDING_REQUEUE_SECONDS", 60.0)
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
# An OpenAI-compatible config's API key is read from the environment variable it names, and only
# from one whose name starts with this prefix: a config can never read SECRET_KEY or DATABASE_URL.
MODEL_API_KEY_ENV_PREFIX = os.environ.get("MODEL_API_KEY_ENV_PREFIX", "CG_MODEL_KEY_")
if not MODEL_API_KEY_ENV_PREFIX:
    raise ImproperlyConfigured("MODEL_API_KEY_ENV_PREFIX must not be empty (it keeps model configs off other secrets)")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Model servers (the openai backend, workers.backends.OpenAIBackend) -------------------
# Seconds to open a connection (and TLS) to a model server; a server that cannot be reached fails fast.
MODEL_SERVER_CONNECT_TIMEOUT = envfloat("MODEL_SERVER_CONNECT_TIMEOUT", 5.0)
# Seconds a reply may wait for its first byte and then between two chunks (an idle timeout, not a total).
MODEL_SERVER_READ_TIMEOUT = envfloat("MODEL_SERVER_READ_TIMEOUT", 60.0)
# Further tries after a connection error, 429 or 5xx, only while no text of the reply was streamed.
MODEL_SERVER_RETRIES = envint("MODEL_SERVER_RETRIES", 3)
# The first wait between tries; it doubles each time, with jitter (0.25-0.5 s, 0.5-1 s, 1-2 s by default).
MODEL_SERVER_BACKOFF_SECONDS = envfloat("MODEL_SERVER_BACKOFF_SECONDS", 0.5)
# The longest wait between tries; a server asking (Retry-After) for longer fails the reply at once.
MODEL_SERVER_MAX_WAIT_SECONDS = envfloat("MODEL_SERVER_MAX_WAIT_SECONDS", 30.0)
