"""Settings of wecom_sync, read lazily from the ``WECOM_SYNC`` dict in Django settings.

Every key has a documented default below (README, "Settings reference"). Values are read on each
access, so ``override_settings(WECOM_SYNC=...)`` works in tests; the cache of the adapter class is
dropped on ``setting_changed``.
"""

from __future__ import annotations

from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # Keys that encrypt secrets at rest, newest first. Empty: one derived from SECRET_KEY.
    "ENCRYPTION_KEYS": [],
    # Dotted path of the adapter class that turns WeCom members into Django users.
    "ADAPTER": "wecom_sync.adapter.DefaultWeComAdapter",
    # (connect, read) timeouts in seconds for calls to the WeCom API.
    "API_TIMEOUT": (5.0, 30.0),
    # How many times a transient API failure is retried, and the total time retries may take.
    "API_MAX_RETRIES": 4,
    "API_RETRY_MAX_SECONDS": 60.0,
    "API_RETRY_BASE_DELAY": 0.5,
    # Django cache alias that holds access tokens (use Redis in production so workers share them).
    "TOKEN_CACHE_ALIAS": "default",
    # Refresh an access token this many seconds before WeCom says it expires.
    "TOKEN_REFRESH_MARGIN": 300,
    # Parallel detail requests (user/get, department/get) in the contact-sync fetch strategy.
    "FETCH_CONCURRENCY": 8,
    # Rows per bulk query when applying a plan.
    "BATCH_SIZE": 1000,
    # Whether status 4 (invited, not yet activated) users get an active Django account.
    "NOT_ACTIVATED_USERS_ACTIVE": True,
    # Fields used to link an existing Django user on first sight: any of "email", "mobile", "username".
    "LINK_EXISTING_BY": ["email"],
    # On accounts the sync linked or an admin linked by hand, the sync never changes the login field or the
    # email, unless listed here ("username" and "email" name the user model's login and email fields).
    "LINKED_ACCOUNT_FIELDS": [],
    # Hosts (host or host:port) that a source's API base URL may point at. WeCom's API host only by default;
    # the example project and the tests add the loopback simulator.
    "API_HOSTS": ["qyapi.weixin.qq.com"],
    # Larger API response bodies are refused (a misconfigured or hostile host cannot fill the memory).
    "API_MAX_RESPONSE_BYTES": 16 * 1024 * 1024,
    # Applied and ignored callback events older than this many days are deleted by the periodic task.
    "EVENT_RETENTION_DAYS": 30,
    # The change rows of runs finished more than this many days ago are deleted (the run and its counters stay).
    "RUN_CHANGES_RETENTION_DAYS": 180,
    # Mirror each WeCom department as a Django Group of the same name (only groups we created are touched).
    "MIRROR_GROUPS": False,
    # Read WeCom tags (tag/list, tag/get) in full syncs and on update_tag events.
    "SYNC_TAGS": False,
    # Mirror each tag as a Django Group the sync creates (implies SYNC_TAGS).
    "MIRROR_TAGS": False,
    # A running sync with no heartbeat for this many seconds is closed as failed by the stale-run task.
    "STALE_RUN_SECONDS": 600,
    # Callback requests with a larger body are refused with HTTP 413.
    "CALLBACK_MAX_BODY_BYTES": 256 * 1024,
    # Base URL (scheme and host) used to build absolute callback URLs when no request is at hand.
    "CALLBACK_BASE_URL": "",
    # A failing callback event is retried this many times, then kept as failed.
    "EVENT_MAX_ATTEMPTS": 5,
    # Pending events older than this many seconds are re-enqueued by the periodic task.
    "EVENT_REQUEUE_AFTER_SECONDS": 60,
    # The status command and health endpoint report a source whose oldest pending event is older than this.
    "STATUS_PENDING_EVENT_MAX_AGE_SECONDS": 3600,
    # Sign in with WeCom: the in-client OAuth2 page and the web login (QR code) page, as full URLs.
    "OAUTH_AUTHORIZE_URL": "https://open.weixin.qq.com/connect/oauth2/authorize",
    "WEB_LOGIN_URL": "https://login.work.weixin.qq.com/wwlogin/sso/login",
    # Sign in with WeCom: fetch and provision a member the sync has not mirrored yet.
    "LOGIN_CREATE_USERS": False,
    # Sign in with WeCom: seconds a login's state stays valid (WeCom's codes live 5 minutes).
    "LOGIN_STATE_MAX_AGE": 600,
    # Run syncs in a thread of the web process and callback events right after their request, no broker.
    "RUN_TASKS_IN_PROCESS": False,
    # Before sending a sync to Celery, ask the workers to answer within this many seconds (0: don't ask).
    "WORKER_PING_TIMEOUT": 1.0,
    # A run still queued after this many seconds shows "no worker took this run" on its page.
    "QUEUED_HINT_SECONDS": 60,
}


class AppSettings:
    """Typed, lazy access to ``settings.WECOM_SYNC`` with defaults."""

    def _get(self, name: str) -> Any:
        from django.conf import settings

        user = getattr(settings, "WECOM_SYNC", None) or {}
        return user.get(name, DEFAULTS[name])

    @property
    def ENCRYPTION_KEYS(self) -> list[str]:  # noqa: N802 - settings are upper case
        keys = self._get("ENCRYPTION_KEYS")
        if isinstance(keys, str):
            keys = [keys]
        return [k for k in keys if k]

    @property
    def ADAPTER(self) -> str:  # noqa: N802
        return self._get("ADAPTER")

    @property
    def API_TIMEOUT(self) -> tuple[float, float]:  # noqa: N802
        value = self._get("API_TIMEOUT")
        if isinstance(value, int | float):
            return (float(value), float(value))
        return (float(value[0]), float(value[1]))

    @property
    def API_MAX_RETRIES(self) -> int:  # noqa: N802
        return int(self._get("API_MAX_RETRIES"))

    @property
    def API_RETRY_MAX_SECONDS(self) -> float:  # noqa: N802
        return float(self._get("API_RETRY_MAX_SECONDS"))

    @property
    def API_RETRY_BASE_DELAY(self) -> float:  # noqa: N802
        return float(self._get("API_RETRY_BASE_DELAY"))

    @property
    def TOKEN_CACHE_ALIAS(self) -> str:  # noqa: N802
        return self._get("TOKEN_CACHE_ALIAS")

    @property
    def TOKEN_REFRESH_MARGIN(self) -> int:  # noqa: N802
        return int(self._get("TOKEN_REFRESH_MARGIN"))

    @property
    def FETCH_CONCURRENCY(self) -> int:  # noqa: N802
        return max(1, int(self._get("FETCH_CONCURRENCY")))

    @property
    def BATCH_SIZE(self) -> int:  # noqa: N802
        return max(1, int(self._get("BATCH_SIZE")))

    @property
    def NOT_ACTIVATED_USERS_ACTIVE(self) -> bool:  # noqa: N802
        return bool(self._get("NOT_ACTIVATED_USERS_ACTIVE"))

    @property
    def LINK_EXISTING_BY(self) -> list[str]:  # noqa: N802
        return list(self._get("LINK_EXISTING_BY") or [])

    @property
    def LINKED_ACCOUNT_FIELDS(self) -> list[str]:  # noqa: N802
        return list(self._get("LINKED_ACCOUNT_FIELDS") or [])

    @property
    def API_HOSTS(self) -> list[str]:  # noqa: N802
        value = self._get("API_HOSTS") or []
        if isinstance(value, str):
            value = [value]
        return [str(h).strip().lower() for h in value if str(h).strip()]

    @property
    def API_MAX_RESPONSE_BYTES(self) -> int:  # noqa: N802
        return max(1024, int(self._get("API_MAX_RESPONSE_BYTES")))

    @property
    def EVENT_RETENTION_DAYS(self) -> int:  # noqa: N802
        return max(1, int(self._get("EVENT_RETENTION_DAYS")))

    @property
    def RUN_CHANGES_RETENTION_DAYS(self) -> int:  # noqa: N802
        return max(1, int(self._get("RUN_CHANGES_RETENTION_DAYS")))

    @property
    def MIRROR_GROUPS(self) -> bool:  # noqa: N802
        return bool(self._get("MIRROR_GROUPS"))

    @property
    def SYNC_TAGS(self) -> bool:  # noqa: N802
        return bool(self._get("SYNC_TAGS")) or self.MIRROR_TAGS

    @property
    def MIRROR_TAGS(self) -> bool:  # noqa: N802
        return bool(self._get("MIRROR_TAGS"))

    @property
    def STALE_RUN_SECONDS(self) -> int:  # noqa: N802
        return int(self._get("STALE_RUN_SECONDS"))

    @property
    def CALLBACK_MAX_BODY_BYTES(self) -> int:  # noqa: N802
        return int(self._get("CALLBACK_MAX_BODY_BYTES"))

    @property
    def CALLBACK_BASE_URL(self) -> str:  # noqa: N802
        return str(self._get("CALLBACK_BASE_URL") or "").rstrip("/")

    @property
    def EVENT_MAX_ATTEMPTS(self) -> int:  # noqa: N802
        return max(1, int(self._get("EVENT_MAX_ATTEMPTS")))

    @property
    def EVENT_REQUEUE_AFTER_SECONDS(self) -> int:  # noqa: N802
        return int(self._get("EVENT_REQUEUE_AFTER_SECONDS"))

    @property
    def STATUS_PENDING_EVENT_MAX_AGE_SECONDS(self) -> int:  # noqa: N802
        return max(0, int(self._get("STATUS_PENDING_EVENT_MAX_AGE_SECONDS")))

    @property
    def OAUTH_AUTHORIZE_URL(self) -> str:  # noqa: N802
        return str(self._get("OAUTH_AUTHORIZE_URL") or DEFAULTS["OAUTH_AUTHORIZE_URL"])

    @property
    def WEB_LOGIN_URL(self) -> str:  # noqa: N802
        return str(self._get("WEB_LOGIN_URL") or DEFAULTS["WEB_LOGIN_URL"])

    @property
    def LOGIN_CREATE_USERS(self) -> bool:  # noqa: N802
        return bool(self._get("LOGIN_CREATE_USERS"))

    @property
    def LOGIN_STATE_MAX_AGE(self) -> int:  # noqa: N802
        return max(1, int(self._get("LOGIN_STATE_MAX_AGE")))

    @property
    def RUN_TASKS_IN_PROCESS(self) -> bool:  # noqa: N802
        return bool(self._get("RUN_TASKS_IN_PROCESS"))

    @property
    def WORKER_PING_TIMEOUT(self) -> float:  # noqa: N802
        return max(0.0, float(self._get("WORKER_PING_TIMEOUT")))

    @property
    def QUEUED_HINT_SECONDS(self) -> int:  # noqa: N802
        return max(0, int(self._get("QUEUED_HINT_SECONDS")))


app_settings = AppSettings()

_caches: list[dict] = []


def register_cache(cache: dict) -> dict:
    """Register a module-level cache dict that is cleared whenever WECOM_SYNC or SECRET_KEY changes."""
    _caches.append(cache)
    return cache


@receiver(setting_changed)
def _reload(sender: Any, setting: str, **kwargs: Any) -> None:
    if setting in ("WECOM_SYNC", "SECRET_KEY", "SECRET_KEY_FALLBACKS"):
        for cache in _caches:
            cache.clear()
