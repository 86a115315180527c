"""Settings for the test suite.

SQLite by default. DATABASE_URL selects PostgreSQL; with CI set and no DATABASE_URL, the local PostgreSQL
is used, so a CI run cannot silently fall back to SQLite (WECOM_TEST_DB=sqlite asks for SQLite explicitly).
"""

import os

from example_project.settings import *  # noqa: F401,F403
from example_project.settings import INSTALLED_APPS as _EXAMPLE_APPS
from example_project.settings import database_from_url

_url = os.environ.get("DATABASE_URL", "")
if os.environ.get("WECOM_TEST_DB") == "sqlite":
    _url = ""
elif not _url and os.environ.get("CI"):
    _url = "postgres://postgres@127.0.0.1:5432/wecom_sync"

DATABASES = {
    "default": database_from_url(_url)
    if _url
    else {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:", "TEST": {"NAME": None}}
}

SECRET_KEY = "tests-secret-key"
DEBUG = False
ALLOWED_HOSTS = ["*"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
CELERY_TASK_ALWAYS_EAGER = True
CELERY_BROKER_URL = "memory://"
WECOM_SYNC = {
    "ENCRYPTION_KEYS": ["tests-encryption-key-1"],
    # WeCom's host and the loopback simulator (WeComSimulator listens on 127.0.0.1).
    "API_HOSTS": ["qyapi.weixin.qq.com", "127.0.0.1", "localhost"],
    "API_RETRY_BASE_DELAY": 0.01,
    "API_RETRY_MAX_SECONDS": 5.0,
}
LOGGING = {"version": 1, "disable_existing_loggers": False}

# Token authentication next to sessions, as a site would configure DRF, so the API tests can use both.
INSTALLED_APPS = [*_EXAMPLE_APPS, "rest_framework.authtoken"]
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
}
