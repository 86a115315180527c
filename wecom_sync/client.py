"""The WeCom server API client: shared access-token cache, retries with backoff, typed errors.

Knows nothing of models: ``from_source`` only reads a source's credential attributes; fetching a whole
directory is the sync engine's (``wecom_sync.sync.fetch``).
Secrets and access tokens never reach a log line, an exception message or a repr: URLs are never put into
messages, and urllib3's debug log of request lines is redacted (see ``redact``).
"""

from __future__ import annotations

import hashlib
import json as jsonlib
import logging
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from django.core.cache import caches
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop
from requests.adapters import HTTPAdapter

from .conf import app_settings
from .exceptions import TOKEN_ERRCODES, TRANSIENT_ERRCODES, WeComAPIError, WeComError, WeComTransportError

logger = logging.getLogger("wecom_sync.client")

DEFAULT_BASE_URL = "https://qyapi.weixin.qq.com"
#: errcodes that mean the credentials themselves are wrong: nothing can be fetched, never retried.
CREDENTIAL_ERRCODES = frozenset({40001, 40013, 40091})
#: Seconds between two looks at the cache while another worker fetches the token.
_TOKEN_POLL_SECONDS = 0.05

# "code" is a sign-in's OAuth code (auth/getuserinfo); the lookbehind keeps "errcode=" readable.
_SECRET_QUERY = re.compile(r"((?<![A-Za-z0-9_])(?:access_token|corpsecret|code)=)[^&\s'\"]*", re.IGNORECASE)
_USERID_QUERY = re.compile(r"((?<![A-Za-z0-9_])userid=)[^&\s'\"]*", re.IGNORECASE)
#: Set by ``userids_redacted``: request lines hide userid= values too.
_hide_userids: ContextVar[bool] = ContextVar("wecom_sync_hide_userids", default=False)

T = TypeVar("T")
R = TypeVar("R")


def redact(text: str) -> str:
    """Return text with the values of access_token=, corpsecret= and code= query parameters replaced by ***."""
    text = _SECRET_QUERY.sub(r"\1***", text)
    return _USERID_QUERY.sub(r"\1***", text) if _hide_userids.get() else text


@contextmanager
def userids_redacted() -> Iterator[None]:
    """Within the block, urllib3's request lines hide userid= values too (a sign-in: who signs in is not logged)."""
    token = _hide_userids.set(True)
    try:
        yield
    finally:
        _hide_userids.reset(token)


class RedactSecretsFilter(logging.Filter):
    """Logging filter that redacts access tokens and secrets from a record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


# urllib3 logs every request line, query string included, at DEBUG: keep tokens out of it.
_urllib3_logger = logging.getLogger("urllib3.connectionpool")
if not any(isinstance(f, RedactSecretsFilter) for f in _urllib3_logger.filters):
    _urllib3_logger.addFilter(RedactSecretsFilter())

_local_locks: dict[str, threading.Lock] = {}
_local_locks_guard = threading.Lock()


def _local_lock(key: str) -> threading.Lock:
    with _local_locks_guard:
        return _local_locks.setdefault(key, threading.Lock())


def new_session(pool_size: int | None = None) -> requests.Session:
    """Return a requests.Session whose connection pool fits FETCH_CONCURRENCY parallel requests."""
    size = max(10, pool_size or app_settings.FETCH_CONCURRENCY * 2)
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = "django-wecom-sync"
    return session


#: Longest errmsg from the API kept in an error (and so in run messages that view-only users read).
ERRMSG_MAX_CHARS = 200
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f<>]")


class APIHostNotAllowed(WeComError):
    """The API base URL points at a host that ``WECOM_SYNC["API_HOSTS"]`` does not list."""

    hint = gettext_noop(
        "Use https://qyapi.weixin.qq.com, or add the host to WECOM_SYNC['API_HOSTS'] in the site's settings."
    )


def api_host_allowed(base_url: str) -> bool:
    """Whether ``base_url`` is an http(s) URL, without credentials, query or fragment, on an allowed host.

    ``WECOM_SYNC["API_HOSTS"]`` entries are a host name (any port) or ``host:port``.
    """
    try:
        parts = urlsplit(base_url or "")
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return False
    if parts.query or parts.fragment:
        return False
    host = parts.hostname.lower().rstrip(".")
    allowed = app_settings.API_HOSTS
    return host in allowed or (port is not None and f"{host}:{port}" in allowed)


def check_api_base_url(base_url: str) -> None:
    """Raise APIHostNotAllowed unless ``base_url`` may receive this site's secrets and tokens."""
    if not api_host_allowed(base_url):
        raise APIHostNotAllowed(
            _("The API base URL is not on an allowed host: no secret or token is sent there.")
        )


def clean_errmsg(value: Any) -> str:
    """A remote errmsg made safe to show: one line, no markup characters, at most ERRMSG_MAX_CHARS."""
    text = _UNPRINTABLE.sub(" ", str(value or "")).strip()
    return text[: ERRMSG_MAX_CHARS - 1] + "…" if len(text) > ERRMSG_MAX_CHARS else text


def _transport_error(message: str, *, retryable: bool, status_code: int | None = None) -> WeComTransportError:
    error = WeComTransportError(message)
    error.retryable = retryable  # type: ignore[attr-defined]
    error.status_code = status_code  # type: ignore[attr-defined]
    return error


def _read_limited(response: requests.Response, limit: int) -> tuple[int, bytes]:
    """Read an answer of at most ``limit`` bytes (one chunk more when it is longer); return its declared size."""
    try:
        declared = int(response.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    received: list[bytes] = []
    size = 0
    if declared <= limit:
        for chunk in response.iter_content(64 * 1024):
            received.append(chunk)
            size += len(chunk)
            if size > limit:
                break
    response.close()
    return declared, b"".join(received)


def _decode_answer(
    api: str, response: requests.Response, declared: int, content: bytes, limit: int
) -> dict[str, Any]:
    """Return the JSON object WeCom answered, or raise a transport error (too large, redirect, HTTP error)."""
    status = response.status_code
    if declared > limit or len(content) > limit:
        raise _transport_error(
            _("WeCom's answer to %(api)s is larger than %(limit)d bytes; it was refused.")
            % {"api": api, "limit": limit},
            retryable=False,
            status_code=status,
        )
    if 300 <= status < 400:
        raise _transport_error(
            _("WeCom answered %(api)s with a redirect (HTTP %(status)s); redirects are not followed.")
            % {"api": api, "status": status},
            retryable=False,
            status_code=status,
        )
    if status != 200:
        raise _transport_error(
            _("WeCom answered HTTP %(status)s for %(api)s.") % {"status": status, "api": api},
            retryable=status >= 500 or status == 429,
            status_code=status,
        )
    try:
        data = jsonlib.loads(content.decode(response.encoding or "utf-8", "replace"))
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise _transport_error(
            _("WeCom answered %(api)s with something that is not a JSON object.") % {"api": api},
            retryable=True,
            status_code=status,
        )
    return data


class WeComClient:
    """A client of one WeCom credential (corp id + secret): token cache, retries and typed errors."""

    def __init__(
        self,
        corp_id: str,
        secret: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        cache_alias: str | None = None,
        timeout: float | tuple[float, float] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.corp_id = corp_id
        self._secret = secret
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        check_api_base_url(self.base_url)
        self.cache_alias = cache_alias or app_settings.TOKEN_CACHE_ALIAS
        self.timeout = timeout if timeout is not None else app_settings.API_TIMEOUT
        self._owns_session = session is None
        self.session = session if session is not None else new_session()
        # The base URL is part of the key: a token fetched from one host is never sent to another.
        digest = hashlib.sha256(f"{corp_id}\n{secret}\n{self.base_url}".encode()).hexdigest()[:40]
        self._token_key = f"wecom_sync:token:{corp_id}:{digest}"
        self._token: tuple[str, float] | None = None  # (token, refresh at) memoised from the cache
        self._calls_lock = threading.Lock()
        self.api_calls = 0

    @classmethod
    def from_source(
        cls, source: Any, *, credential: str = "app", session: requests.Session | None = None
    ) -> WeComClient:
        """Return a client for a SyncSource's app secret ("app") or contact-sync secret ("contact_sync")."""
        if credential == "app":
            secret = source.secret
        elif credential == "contact_sync":
            secret = source.contact_sync_secret
        else:
            raise ValueError(f"Unknown credential {credential!r}: use 'app' or 'contact_sync'.")
        if not secret:
            error = WeComError(_("The source has no %(credential)s secret.") % {"credential": credential})
            error.hint = _("Enter the Secret in the source's settings.")
            raise error
        return cls(source.corp_id, secret, base_url=source.api_base_url or DEFAULT_BASE_URL, session=session)

    def __repr__(self) -> str:
        return f"WeComClient(corp_id={self.corp_id!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> WeComClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- access token -------------------------------------------------------------------------------
    @property
    def _cache(self) -> Any:
        return caches[self.cache_alias]

    def _cached_token(self) -> str | None:
        entry = self._cache.get(self._token_key)
        if isinstance(entry, dict) and entry.get("refresh_at", 0) > time.time() and entry.get("token"):
            self._token = (entry["token"], entry["refresh_at"])
            return entry["token"]
        return None

    def get_access_token(self) -> str:
        """Return a valid access token: from memory, from the shared cache, or from gettoken (one caller)."""
        memo = self._token
        if memo is not None and memo[1] > time.time():
            return memo[0]
        return self._cached_token() or self._refresh_token()

    def invalidate_token(self, token: str | None = None) -> None:
        """Drop the cached token (only if it is still ``token``, so a fresher one is kept)."""
        self._token = None
        entry = self._cache.get(self._token_key)
        if isinstance(entry, dict) and (token is None or entry.get("token") == token):
            self._cache.delete(self._token_key)

    def _refresh_token(self, stale: str | None = None) -> str:
        """Fetch a token so that, across threads and workers sharing the cache, one caller calls gettoken."""
        lock_key = self._token_key + ":lock"
        connect, read = self.timeout if isinstance(self.timeout, tuple) else (self.timeout, self.timeout)
        lock_seconds = max(5, math.ceil(connect + read) + 5)
        owner = uuid.uuid4().hex
        give_up_waiting = time.monotonic() + 2 * lock_seconds
        with _local_lock(self._token_key):
            while True:
                token = self._cached_token()
                if token and token != stale:
                    return token
                # A cache whose add() keeps failing (e.g. unreachable) must not make us wait forever.
                if self._cache.add(lock_key, owner, timeout=lock_seconds) or time.monotonic() > give_up_waiting:
                    try:
                        token = self._cached_token()  # another worker may have finished just before us
                        if token and token != stale:
                            return token
                        return self._fetch_token()
                    finally:
                        if self._cache.get(lock_key) == owner:
                            self._cache.delete(lock_key)
                # Another worker is fetching: wait for its token (the lock expires if that worker died).
                time.sleep(_TOKEN_POLL_SECONDS)

    def _fetch_token(self) -> str:
        data = self._call("GET", "gettoken", params={"corpid": self.corp_id, "corpsecret": self._secret},
                          with_token=False)
        token = str(data.get("access_token") or "")
        if not token:
            raise _transport_error(_("WeCom's gettoken answered without an access token."), retryable=False)
        expires_in = int(data.get("expires_in") or 7200)
        margin = app_settings.TOKEN_REFRESH_MARGIN
        # Refresh `margin` seconds early, but never spend more than half of a short lifetime in the margin.
        lifetime = expires_in - margin if expires_in > 2 * margin else expires_in / 2
        now = time.time()
        refresh_at = now + lifetime
        entry = {"token": token, "expires_at": now + expires_in, "refresh_at": refresh_at}
        self._cache.set(self._token_key, entry, timeout=max(1, int(lifetime)))
        self._token = (token, refresh_at)
        logger.info("wecom_sync.client.token_fetched", extra={"corp_id": self.corp_id, "expires_in": expires_in})
        return token

    # -- calls --------------------------------------------------------------------------------------
    def _count_call(self) -> None:
        with self._calls_lock:
            self.api_calls += 1

    def _backoff(self, attempt: int) -> float:
        base = app_settings.API_RETRY_BASE_DELAY
        ceiling = base * (2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # "equal jitter": spread, but never zero

    def _send(self, method: str, api: str, params: dict[str, Any], body: Any, token: str | None) -> dict[str, Any]:
        query = dict(params)
        if token is not None:
            query["access_token"] = token
        url = f"{self.base_url}/cgi-bin/{api}"
        check_api_base_url(self.base_url)  # the setting may have changed since the client was made
        self._count_call()
        limit = app_settings.API_MAX_RESPONSE_BYTES
        try:
            # No redirects: a redirect would carry the secret or the token to wherever it points.
            response = self.session.request(method, url, params=query, json=body, timeout=self.timeout,
                                            allow_redirects=False, stream=True)
            declared, content = _read_limited(response, limit)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _transport_error(
                _("WeCom could not be reached for %(api)s at %(host)s (%(error)s).")
                % {"api": api, "host": self.base_url, "error": type(exc).__name__},
                retryable=True,
            ) from None  # the cause's text holds the URL, access token included
        except requests.RequestException as exc:
            raise _transport_error(
                _("The request to WeCom for %(api)s failed (%(error)s).") % {"api": api, "error": type(exc).__name__},
                retryable=False,
            ) from None
        return _decode_answer(api, response, declared, content, limit)

    def call(self, method: str, api: str, *, params: dict[str, Any] | None = None, json: Any = None) -> dict[str, Any]:
        """Call an API (e.g. "user/get") with the access token; return the JSON answer when errcode is 0."""
        return self._call(method, api, params=params or {}, json=json)

    def _call(
        self, method: str, api: str, *, params: dict[str, Any], json: Any = None, with_token: bool = True
    ) -> dict[str, Any]:
        attempts = 0
        token_retried = False
        deadline = time.monotonic() + app_settings.API_RETRY_MAX_SECONDS
        while True:
            token = self.get_access_token() if with_token else None
            failure: WeComError
            try:
                data = self._send(method, api, params, json, token)
            except WeComTransportError as exc:
                if not getattr(exc, "retryable", False):
                    raise
                failure = exc
                errcode = None
            else:
                try:
                    errcode = int(data.get("errcode") or 0)
                except (TypeError, ValueError):
                    errcode = -1
                if errcode == 0:
                    return data
                failure = WeComAPIError(errcode, clean_errmsg(data.get("errmsg")), api=api)
                if with_token and errcode in TOKEN_ERRCODES and not token_retried:
                    token_retried = True
                    logger.info("wecom_sync.client.token_rejected", extra={"api": api, "errcode": errcode})
                    self.invalidate_token(token)
                    self._token = None
                    self._refresh_token(stale=token)
                    continue
                if errcode not in TRANSIENT_ERRCODES:
                    raise failure
            attempts += 1
            delay = self._backoff(attempts)
            if attempts > app_settings.API_MAX_RETRIES or time.monotonic() + delay > deadline:
                logger.warning("wecom_sync.client.gave_up", extra={"api": api, "attempts": attempts,
                                                                    "errcode": errcode})
                raise failure
            logger.warning(
                "wecom_sync.client.retry",
                extra={"api": api, "attempt": attempts, "delay": round(delay, 3), "errcode": errcode},
            )
            time.sleep(delay)

    # -- directory APIs -----------------------------------------------------------------------------
    def get_department(self, id: int) -> dict[str, Any]:  # noqa: A002 - WeCom's parameter name
        """Return one department (department/get)."""
        return self._call("GET", "department/get", params={"id": int(id)})["department"]

    def list_departments(self, id: int | None = None) -> list[dict[str, Any]]:  # noqa: A002
        """Return a department and all its descendants with details (department/list); all when id is None."""
        params = {} if id is None else {"id": int(id)}
        return list(self._call("GET", "department/list", params=params).get("department") or [])

    def simplelist_departments(self, id: int | None = None) -> list[dict[str, Any]]:  # noqa: A002
        """Return {"id", "parentid", "order"} for a department and its descendants (department/simplelist)."""
        params = {} if id is None else {"id": int(id)}
        return list(self._call("GET", "department/simplelist", params=params).get("department_id") or [])

    def get_user(self, userid: str) -> dict[str, Any]:
        """Return one member (user/get), without errcode/errmsg."""
        data = self._call("GET", "user/get", params={"userid": userid})
        return {k: v for k, v in data.items() if k not in ("errcode", "errmsg")}

    def list_users(self, department_id: int) -> list[dict[str, Any]]:
        """Return the members of one department with details (user/list)."""
        data = self._call("GET", "user/list", params={"department_id": int(department_id)})
        return list(data.get("userlist") or [])

    def simplelist_users(self, department_id: int) -> list[dict[str, Any]]:
        """Return {"userid", "name", "department"} for the members of one department (user/simplelist)."""
        data = self._call("GET", "user/simplelist", params={"department_id": int(department_id)})
        return list(data.get("userlist") or [])

    def list_user_ids(self, *, limit: int = 10000) -> list[dict[str, Any]]:
        """Return every {"userid", "department"} row of user/list_id, following the cursor to the end."""
        rows: list[dict[str, Any]] = []
        cursor = ""
        seen: set[str] = set()
        while True:
            body: dict[str, Any] = {"limit": int(limit)}
            if cursor:
                body["cursor"] = cursor
            data = self._call("POST", "user/list_id", params={}, json=body)
            rows.extend(data.get("dept_user") or [])
            cursor = str(data.get("next_cursor") or "")
            if not cursor:
                return rows
            if cursor in seen:
                raise _transport_error(_("user/list_id repeated a cursor; pagination stopped."), retryable=False)
            seen.add(cursor)

    # -- tags and messages --------------------------------------------------------------------------
    def list_tags(self) -> list[dict[str, Any]]:
        """Return every {"tagid", "tagname"} the credential can see (tag/list)."""
        return list(self._call("GET", "tag/list", params={}).get("taglist") or [])

    def get_tag(self, tag_id: int) -> dict[str, Any]:
        """Return one tag (tag/get): ``tagname``, ``userlist[{userid, name}]`` and ``partylist``."""
        data = self._call("GET", "tag/get", params={"tagid": int(tag_id)})
        return {k: v for k, v in data.items() if k not in ("errcode", "errmsg")}

    def send_message(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send an app message (message/send); return WeCom's answer (invaliduser, invalidparty, ...)."""
        return self._call("POST", "message/send", params={}, json=body)
