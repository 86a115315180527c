"""Settings of the example project: SQLite and eager Celery by default, real services by environment.

DATABASE_URL=postgres://user@host:port/name switches to PostgreSQL; CELERY_BROKER_URL=redis://... switches
Celery to a real broker; REDIS_URL=redis://... puts the Django cache (and so the token cache) on Redis.
"""

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import django

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-insecure-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["*"] if DEBUG else os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "wecom_sync",
]

# Sign in with WeCom next to the usual username and password.
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "wecom_sync.auth.WeComBackend",
]
# The example project has no pages of its own: logging in means the admin.
LOGIN_URL = "admin:login"
LOGIN_REDIRECT_URL = "admin:index"

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "example_project" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.debug",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "example_project.wsgi.application"


# SQLite: wait for the write lock instead of failing at once, and (Django >= 5.1) write-ahead logging so that
# the admin's readers never wait for a sync or a worker writing (docs/deployment.md, "SQLite").
SQLITE_OPTIONS: dict = {"timeout": 30}
if django.VERSION >= (5, 1):
    SQLITE_OPTIONS["init_command"] = "PRAGMA journal_mode=WAL;"


def database_from_url(url: str) -> dict:
    """Return a DATABASES entry for a postgres:// or sqlite:/// URL."""
    parsed = urlparse(url)
    if parsed.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parsed.path.lstrip("/")) or "postgres",
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
            "CONN_MAX_AGE": 0,
        }
    if parsed.scheme == "sqlite":
        name = parsed.path[1:] if parsed.path.startswith("//") else parsed.path
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": name, "OPTIONS": SQLITE_OPTIONS}
    raise ValueError(f"Unsupported DATABASE_URL scheme: {parsed.scheme!r}")


DATABASES = {
    "default": database_from_url(os.environ["DATABASE_URL"])
    if os.environ.get("DATABASE_URL")
    else {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3", "OPTIONS": SQLITE_OPTIONS}
}

REDIS_URL = os.environ.get("REDIS_URL", "")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    if REDIS_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []
LANGUAGE_CODE = os.environ.get("LANGUAGE_CODE", "en-us")
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Celery: a real broker when CELERY_BROKER_URL is set, otherwise tasks run in-process.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "wecom-sync-scheduled": {"task": "wecom_sync.tasks.run_scheduled_syncs", "schedule": 60.0},
    "wecom-sync-stale-runs": {"task": "wecom_sync.tasks.close_stale_runs", "schedule": 120.0},
    "wecom-sync-requeue-events": {"task": "wecom_sync.tasks.requeue_pending_events", "schedule": 60.0},
    "wecom-sync-retention": {"task": "wecom_sync.tasks.purge_old_records", "schedule": 3600.0},
}

WECOM_SYNC: dict[str, Any] = {
    "ENCRYPTION_KEYS": [k for k in os.environ.get("WECOM_SYNC_ENCRYPTION_KEYS", "").split(",") if k],
    "CALLBACK_BASE_URL": os.environ.get("WECOM_SYNC_CALLBACK_BASE_URL", ""),
    # WeCom's API host, plus the loopback simulator of the demo (python -m wecom_sync.simulator, wecom_demo).
    "API_HOSTS": ["qyapi.weixin.qq.com", "127.0.0.1", "localhost"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"wecom_sync": {"handlers": ["console"], "level": os.environ.get("WECOM_SYNC_LOG_LEVEL", "WARNING")}},
}
