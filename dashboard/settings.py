"""Settings, all from the environment. A bad value stops startup with a message
naming the variable, rather than surfacing later as a confusing runtime error."""

import os
import secrets
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DASHBOARD_DATA_DIR", BASE_DIR / "data"))


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off")


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected a number") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r}: must be >= {minimum}")
    return value


def env_int(name: str, default: int, *, minimum: int = 1) -> int:
    value = env_float(name, default, minimum=minimum)
    if value != int(value):
        raise ImproperlyConfigured(f"{name}={os.environ[name]!r}: expected a whole number")
    return int(value)


def env_http_url(name: str, default: str) -> str:
    raw = os.environ.get(name) or default
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected an http(s) URL such as {default}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r}: the port is not a number") from None
    return raw.rstrip("/")


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_origins(name: str) -> list[str]:
    origins = env_list(name)
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in {"http", "https"} or not parts.netloc or parts.path not in {"", "/"}:
            raise ImproperlyConfigured(f"{name}: {origin!r} is not an origin such as https://dashboard.example.com")
    return [o.rstrip("/") for o in origins]


def database_from_url(url: str) -> dict:
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(
            f"DATABASE_URL scheme {parts.scheme!r}: only postgres:// or postgresql:// is supported"
        )
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    host = query.pop("host", None) or parts.hostname or ""
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ImproperlyConfigured("DATABASE_URL names no database (expected .../dbname)")
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured("DATABASE_URL has a port that is not a number") from None
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(port or ""),
        "OPTIONS": query,
        "CONN_MAX_AGE": 0,
    }


def secret_key() -> str:
    if key := os.environ.get("SECRET_KEY"):
        return key
    # Local use only: a key generated once and kept beside the data, so sessions
    # survive restarts without anyone having to invent a secret.
    path = DATA_DIR / "secret_key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
# Origins (scheme://host[:port]) that may POST and open websockets besides the one the
# request names in Host: the public address when a proxy rewrites Host.
CSRF_TRUSTED_ORIGINS = env_origins("CSRF_TRUSTED_ORIGINS")

# Behind HTTPS (HTTPS=true): secure cookies, redirect http to https, HSTS. Each can be
# set on its own too. `manage.py check --deploy` is clean with HTTPS=true,
# SECURE_HSTS_INCLUDE_SUBDOMAINS=true and SECURE_HSTS_PRELOAD=true (tests/test_security.py).
HTTPS = env_bool("HTTPS", False)
# The header a TLS-terminating proxy sets, e.g. X-Forwarded-Proto; only trust it when
# that proxy overwrites it (else a client could claim https). Default with HTTPS=true.
_proxy_ssl_header = os.environ.get("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto" if HTTPS else "").strip()
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https") if _proxy_ssl_header else None
)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", HTTPS)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", HTTPS)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", HTTPS)
# A year once on HTTPS; start lower (e.g. 3600) while trying a new deployment out.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if HTTPS else 0, minimum=0)
# Off by default: they bind every subdomain of the host, and preloading is hard to undo.
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)

# An operations tool: a working day's session, then log in again.
SESSION_COOKIE_AGE = int(env_float("SESSION_HOURS", 12.0, minimum=0.1) * 3600)
SESSION_EXPIRE_AT_BROWSER_CLOSE = env_bool("SESSION_EXPIRE_AT_BROWSER_CLOSE", False)

if database_url := os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database_from_url(database_url)}
else:
    from dashboard.embedded_postgres import ensure_running

    DATABASES = {"default": database_from_url(ensure_running(DATA_DIR / "postgres"))}

# Who is who in pg_stat_activity (and in the sync engine's advisory lock): the sync
# command or the web. DATABASE_URL's own ?application_name= wins.
DATABASES["default"]["OPTIONS"].setdefault(
    "application_name",
    os.environ.get("DATABASE_APPLICATION_NAME")
    or ("restate-dashboard-sync" if "sync_restate" in sys.argv else "restate-dashboard-web"),
)

# Restate. When RESTATE_ADMIN_URL is unset we talk to the embedded restate-server
# that the run command starts on these ports; setting it means "my own cluster".
RESTATE_EMBEDDED = not os.environ.get("RESTATE_ADMIN_URL")
RESTATE_ADMIN_URL = env_http_url("RESTATE_ADMIN_URL", "http://127.0.0.1:19070")
RESTATE_INGRESS_URL = env_http_url("RESTATE_INGRESS_URL", "http://127.0.0.1:18080")
# Restate's query service has no timeout of its own.
RESTATE_TIMEOUT_S = env_float("RESTATE_TIMEOUT_S", 30.0, minimum=0.1)

# Sync engine tuning (see DESIGN.md "measured facts" for why each exists).
SYNC_PAGE_ROWS = env_int("SYNC_PAGE_ROWS", 2000)
SYNC_OVERLAP_S = env_float("SYNC_OVERLAP_S", 5.0)
SYNC_MIN_INTERVAL_S = env_float("SYNC_MIN_INTERVAL_S", 0.5)
SYNC_MAX_INTERVAL_S = env_float("SYNC_MAX_INTERVAL_S", 10.0)
SYNC_RECONCILE_EVERY_S = env_float("SYNC_RECONCILE_EVERY_S", 180.0)
# Backoff while Restate or PostgreSQL is down: jittered, never longer than this.
SYNC_BACKOFF_CAP_S = env_float("SYNC_BACKOFF_CAP_S", 30.0, minimum=0.1)
# A second sync engine (another replica) checks this often whether it can take over.
SYNC_STANDBY_POLL_S = env_float("SYNC_STANDBY_POLL_S", 2.0, minimum=0.1)
# Rows kept of a snapshot table (queues, locks, promises); past it the snapshot is marked truncated.
SYNC_SNAPSHOT_ROWS = env_int("SYNC_SNAPSHOT_ROWS", 100_000)
# How long before asking again for the Input of a not-started invocation that Restate showed none of.
SYNC_INPUT_RETRY_S = env_float("SYNC_INPUT_RETRY_S", 60.0)
# Deadlock detection after sync steps that changed something: never closer together than
# this (or 4x its own cost), and at least this often whatever changed.
DEADLOCK_REFRESH_MIN_S = env_float("DEADLOCK_REFRESH_MIN_S", 0.5)
DEADLOCK_REFRESH_MAX_S = env_float("DEADLOCK_REFRESH_MAX_S", 30.0, minimum=1.0)

# The push feed: Restate's trace spans, POSTed to /v1/traces (OTLP/HTTP). Restate sends the
# token with its `tracing-headers` (RESTATE_TRACING_HEADERS__AUTHORIZATION="Bearer <token>");
# unset, the receiver is off (404) and the mirror polls.
TRACES_TOKEN = os.environ.get("TRACES_TOKEN", "")
# Bodies above this are refused (413) before being read. Restate's exporter sends batches of
# at most 512 spans, well under 1 MiB.
TRACES_MAX_BODY_BYTES = env_int("TRACES_MAX_BODY_BYTES", 4 * 1024 * 1024)
# Invocation ids waiting for the engine at most; past it new ids are dropped and counted, and
# the engine runs a full step (the scan finds what they announced).
TRACES_HINT_QUEUE_MAX = env_int("TRACES_HINT_QUEUE_MAX", 50_000)
# While spans arrive, the full scan runs this often (the safety net: scheduled and inboxed
# invocations announce nothing until they start, and spans can be lost).
SYNC_SAFETY_NET_S = env_float("SYNC_SAFETY_NET_S", 30.0, minimum=0.1)
# No span for this long: back to adaptive polling (the pages say which mode).
SYNC_PUSH_QUIET_S = env_float("SYNC_PUSH_QUIET_S", 60.0, minimum=0.1)
# Hint passes are at least this far apart, so one read to Restate serves a burst of spans.
SYNC_HINT_BATCH_S = env_float("SYNC_HINT_BATCH_S", 0.05)
# A span's id is re-read once; a longer follow re-reads it for this long (0: once).
SYNC_SPAN_FOLLOW_S = env_float("SYNC_SPAN_FOLLOW_S", 0.0)
# Spans kept for the attempts drawn on the pages: this long, and at most this many rows.
SPANS_KEEP_S = env_float("SPANS_KEEP_S", 7 * 24 * 3600.0, minimum=1.0)
SPANS_MAX_ROWS = env_int("SPANS_MAX_ROWS", 2_000_000)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_htmx",
    "template_partials",
    "channels",
    "axes",
    "csp",
    "procrastinate.contrib.django",
    "invocations",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    # Daphne serves no static files; WhiteNoise does, with caching headers, without a proxy.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "dashboard.middleware.DatabaseUnavailableMiddleware",
    # Last, as django-axes asks: it turns a lockout into the login page saying so.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
ASGI_APPLICATION = "dashboard.asgi.application"
# One process needs no server; the sync engine and web workers in separate
# processes share groups through Redis (the run command starts one).
if redis_url := os.environ.get("REDIS_URL"):
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured(f"REDIS_URL={redis_url!r}: expected redis://host:port[/db]")
    # socket_timeout above channels_redis's 5 s blocking pop: redis-py 8 reads with a 5 s
    # timeout by default, so a socket that heard nothing for 5 s died and reconnected.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": redis_url, "socket_timeout": 15}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

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
                "invocations.views.context_processors.sync_state",
                "invocations.views.context_processors.operate",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/invocations/"
LOGOUT_REDIRECT_URL = "login"

# Login throttling (django-axes): after LOGIN_FAILURE_LIMIT failures for one username
# from one address, that pair is locked out for LOGIN_LOCKOUT_MINUTES. The pair, not the
# address alone: behind a proxy every user shares one address (run Daphne with
# --proxy-headers so REMOTE_ADDR is the client's).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("LOGIN_LOCKOUT_MINUTES", 15.0, minimum=1.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "dashboard.auth.lockout_response"
# Its startup banner would print on every manage.py command.
AXES_VERBOSE = False

# No inline scripts or <style> elements, nothing from other origins. Inline style
# *attributes* stay allowed: the waterfall positions its bars with them. Browsers
# that know style-src-attr/-elem use those; older ones fall back to style-src.
# 'self' in connect-src covers ws:/wss: to this host (CSP Level 3; checked in Chromium).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "style-src-elem": [SELF],
        "style-src-attr": [UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Served straight from the app/static folders: no collectstatic step for a fresh clone.
WHITENOISE_USE_FINDERS = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # procrastinate logs each task registration at INFO, on every manage.py command.
    "loggers": {
        "httpx": {"level": "WARNING"},
        "procrastinate.blueprints": {"level": "WARNING"},
        "procrastinate.periodic": {"level": "WARNING"},
    },
}

# Bulk jobs and attach waits run in procrastinate workers (`manage.py procrastinate
# worker`), a task queue on our own PostgreSQL: jobs survive web restarts and are
# deferred in the same transaction as the rows that describe them.
PROCRASTINATE_IMPORT_PATHS = ["invocations.operations.tasks"]
PROCRASTINATE_AUTODISCOVER_MODULE_NAME = "tasks"
# Ids per bulk-job batch (one status query to Restate, then that many PATCHes); at
# most 1,000, lower only to see a job stop between batches.
BULK_BATCH_SIZE = min(1000, env_int("BULK_BATCH_SIZE", 1000))
