"""Sign in with WeCom: the authentication backend that turns an OAuth ``code`` into the member's Django account.

The flow (shared/wecom-protocol.md §9): the login view sends the browser to WeCom (in-client OAuth2 or the web
login's QR code); WeCom sends it back with ``code`` and ``state``; the callback view checks ``state`` and calls
``django.contrib.auth.authenticate(request, source=..., code=OAuthCode(...))``. ``WeComBackend`` exchanges the
code with ``auth/getuserinfo`` for a userid, finds the source's ``ExternalUser`` (userids are case-insensitive)
and returns its Django account, but only an active account of an active, not-removed mapping of an enabled
source with sign-in on, whose member status the adapter allows (``can_login``). The status is read afresh
with ``user/get`` (the mirror may predate a disable in WeCom); the mirror itself is not written. With
``WECOM_SYNC["LOGIN_CREATE_USERS"]`` a member the sync has not mirrored yet is fetched with ``user/get`` and
provisioned through the sync's own apply code.

A refusal raises ``LoginError`` inside the backend; ``authenticate`` then returns None and the error is left on
``request.wecom_login_error`` for the view to explain. Every refusal is logged as ``wecom_sync.login.<reason>``
with no personal data; codes and tokens are never logged.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import BaseBackend
from django.core.cache import caches
from django.db import transaction
from django.utils import timezone

from .adapter import get_adapter
from .conf import app_settings
from .exceptions import WeComAPIError, WeComError, WeComTransportError
from .internal.secretbox import SecretDecryptionError
from .models import ExternalDepartment, ExternalUser, SyncRun, SyncSource
from .sync.snapshot import RemoteUser, normalize_userid

if TYPE_CHECKING:
    from .client import WeComClient

logger = logging.getLogger("wecom_sync.login")

#: Dotted path of the backend, for ``login(request, user, backend=...)`` and the settings check.
BACKEND_PATH = "wecom_sync.auth.WeComBackend"
#: Seconds a used code is remembered (WeCom's codes live 5 minutes).
USED_CODE_SECONDS = 600
#: getuserinfo / user/get errcodes meaning "the member is outside the app's visible range".
OUTSIDE_RANGE_ERRCODES = frozenset({50002, 60011, 60021})
#: getuserinfo errcodes meaning "this code is not (or no longer) valid".
INVALID_CODE_ERRCODES = frozenset({40029, 42003})
#: user/get errcodes meaning "this member does not exist (any more)".
MEMBER_GONE_ERRCODES = frozenset({60111, 40003})
#: errcode of a redirect URL whose domain is not the app's trusted domain.
UNTRUSTED_DOMAIN_ERRCODE = 50001
#: errcode of a call from an IP that is not among the company's trusted IPs.
UNTRUSTED_IP_ERRCODE = 60020

_IP_RE = re.compile(r"from ip:\s*([0-9A-Fa-f:.]+)")
_IPV4_RE = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")


class LoginError(WeComError):
    """A sign-in with WeCom was refused; ``reason`` is a stable key (``wecom_sync.login.<reason>``)."""

    def __init__(self, reason: str, *, errcode: int | None = None, ip: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.errcode = errcode
        self.ip = ip

    def __repr__(self) -> str:
        return f"LoginError(reason={self.reason!r}, errcode={self.errcode!r})"


class OAuthCode:
    """An OAuth code wrapped so that it never shows in a repr, a log or ``user_login_failed``'s credentials."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = str(value)

    def __repr__(self) -> str:
        return "OAuthCode(********)"

    __str__ = __repr__


def log_failure(reason: str, source: SyncSource | None = None, errcode: int | None = None) -> None:
    """Log a refused sign-in under ``wecom_sync.login.<reason>``: no userid, no IP, no code."""
    logger.warning(
        "wecom_sync.login.%s", reason,
        extra={"reason": reason, "source_id": getattr(source, "pk", None), "errcode": errcode},
    )


def caller_ip(errmsg: str) -> str:
    """The IP WeCom saw (errmsg of 60020 ends with ``from ip: 1.2.3.4``), or ""."""
    match = _IP_RE.search(errmsg or "")
    if match:
        return match.group(1)
    match = _IPV4_RE.search(errmsg or "")  # another wording: the first IPv4 address it names
    return match.group(0) if match else ""


def api_failure(exc: WeComError) -> LoginError:
    """Translate an API error met during sign-in into a LoginError with a stable reason."""
    if isinstance(exc, WeComAPIError):
        code = exc.errcode
        if code == UNTRUSTED_IP_ERRCODE:
            return LoginError("ip_not_trusted", errcode=code, ip=caller_ip(exc.errmsg))
        if code == UNTRUSTED_DOMAIN_ERRCODE:
            return LoginError("untrusted_domain", errcode=code)
        if code in OUTSIDE_RANGE_ERRCODES:
            return LoginError("outside_visible_range", errcode=code)
        if code in INVALID_CODE_ERRCODES:
            return LoginError("code_invalid", errcode=code)
        return LoginError("api_error", errcode=code)
    if isinstance(exc, WeComTransportError):
        return LoginError("api_unreachable")
    return LoginError("config")  # e.g. the source has no Secret


def _claim_code(source: SyncSource, code: str) -> bool:
    """Mark a code as used (in the shared token cache); False if it was used before."""
    digest = hashlib.sha256(f"{source.corp_id}\n{code}".encode()).hexdigest()
    return bool(caches[app_settings.TOKEN_CACHE_ALIAS].add(f"wecom_sync:login:code:{digest}", 1, USED_CODE_SECONDS))


@contextmanager
def app_client(source: SyncSource) -> Iterator[WeComClient]:
    """A client on the source's app secret; a secret that cannot be used raises LoginError, never a 500."""
    from .client import WeComClient, userids_redacted

    try:
        client = WeComClient.from_source(source)
    except SecretDecryptionError:
        raise LoginError("secrets_unreadable") from None
    except WeComError as exc:
        raise api_failure(exc) from None
    with client, userids_redacted():  # who signs in stays out of the HTTP library's debug log
        yield client


def exchange_code(source: SyncSource, code: str) -> str:
    """Return the userid that ``auth/getuserinfo`` gives for a code (raises LoginError)."""
    with app_client(source) as client:
        try:
            data = client.call("GET", "auth/getuserinfo", params={"code": code})
        except WeComError as exc:
            raise api_failure(exc) from None
    userid = str(data.get("userid") or data.get("UserId") or "").strip()
    if not userid:
        # An openid (or external_userid) only: a WeChat user or an external contact, not a member.
        raise LoginError("not_member")
    return userid


def fetch_member(client: WeComClient, userid: str) -> RemoteUser:
    """The member as WeCom lists it now (``user/get``); LoginError ``member_gone`` when WeCom has no such member."""
    try:
        return RemoteUser.from_api(client.get_user(userid))
    except WeComAPIError as exc:
        if exc.errcode in MEMBER_GONE_ERRCODES:
            raise LoginError("member_gone", errcode=exc.errcode) from None
        raise api_failure(exc) from None
    except WeComError as exc:
        raise api_failure(exc) from None


def with_current_status(source: SyncSource, ext: ExternalUser, userid: str) -> ExternalUser:
    """A copy of a mapping with the member's status (and record) as WeCom gives them now; the mirror is not written.

    The mirror may predate a disable in WeCom (events can be late or lost), so a sign-in asks once. WeCom's
    answer decides (gone, disabled, outside the visible range: refused); when WeCom gives no answer at all
    (network or HTTP failure), the mirror, which events keep current, decides as it would without this check.
    """
    try:
        with app_client(source) as client:
            remote = fetch_member(client, userid)
    except LoginError as exc:
        if exc.reason != "api_unreachable":
            raise
        logger.warning("wecom_sync.login.status_unverified", extra={"source_id": source.pk})
        return ext
    current = copy.copy(ext)
    current.status = remote.status
    current.raw = dict(remote.raw)
    return current


def provision_member(source: SyncSource, userid: str) -> ExternalUser:
    """Fetch a member not mirrored yet with ``user/get`` and apply it as a sync would (raises LoginError)."""
    from .events import _missing_departments
    from .sync.objects import apply_remote_objects

    with app_client(source) as client:
        remote = fetch_member(client, userid)
        if not get_adapter().is_active_for_status(remote.status):
            raise LoginError("member_status")
        with transaction.atomic():
            # The source's row lock serialises this with callback events and other sign-ins of the source.
            locked = SyncSource.objects.select_for_update().get(pk=source.pk)
            existing = ExternalUser.objects.filter(source=locked, userid_key=remote.key).first()
            if existing is not None:
                return existing  # mirrored meanwhile (an event, a sync or a concurrent sign-in)
            known = set(
                ExternalDepartment.objects.filter(source=locked, is_removed=False).values_list(
                    "department_id", flat=True)
            )
            try:
                departments = _missing_departments(locked, client, remote.departments)
            except WeComError as exc:
                # The member's unmirrored departments cannot be read: decide on what is known (a member of
                # the root department itself is in scope); the next sync mirrors the rest.
                logger.info("wecom_sync.login.departments_unreadable",
                            extra={"source_id": source.pk, "errcode": getattr(exc, "errcode", None)})
                departments = []
                known.add(int(locked.root_department_id or 1))
            in_scope = known | {d.id for d in departments}
            if not in_scope.intersection(remote.departments):
                raise LoginError("outside_scope")
            now = timezone.now()
            run = SyncRun.objects.create(
                source=locked, kind=SyncRun.Kind.EVENTS, trigger=SyncRun.Trigger.LOGIN,
                status=SyncRun.Status.RUNNING, started_at=now, heartbeat_at=now,
            )
            counters = apply_remote_objects(locked, run, departments=departments, users=[remote])
            failed = sum(v for k, v in counters.items() if k.endswith("_failed"))
            run.status = SyncRun.Status.PARTIAL if failed else SyncRun.Status.SUCCEEDED
            run.finished_at = timezone.now()
            run.counters = counters
            run.save(update_fields=["status", "finished_at", "counters"])
    ext = ExternalUser.objects.select_related("user").filter(source=source, userid_key=remote.key).first()
    if ext is None:
        raise LoginError("provision_failed")
    logger.info("wecom_sync.login.provisioned", extra={"source_id": source.pk, "run_id": run.pk})
    return ext


def authenticate_code(source: SyncSource, code: str) -> Any:
    """Return the Django user a WeCom OAuth code signs in, or raise LoginError with the reason."""
    if not (source.enabled and source.login_enabled):
        raise LoginError("source_unavailable")
    if not code:
        raise LoginError("code_missing")
    if not _claim_code(source, code):
        raise LoginError("code_reused")
    userid = exchange_code(source, code)
    ext = (
        ExternalUser.objects.select_related("user")
        .filter(source=source, userid_key=normalize_userid(userid))
        .first()
    )
    if ext is None:
        if not app_settings.LOGIN_CREATE_USERS:
            raise LoginError("not_mapped")
        ext = provision_member(source, userid)  # read from WeCom just now
    elif not ext.is_removed:
        ext = with_current_status(source, ext, userid)
    if ext.is_removed:
        raise LoginError("mapping_removed")
    if not get_adapter().can_login(ext):
        raise LoginError("member_status")
    user = ext.user
    if user is None:
        raise LoginError("no_account")
    if not getattr(user, "is_active", True):
        raise LoginError("account_inactive")
    return user


class WeComBackend(BaseBackend):
    """Authentication backend for Sign in with WeCom; list it next to ModelBackend in AUTHENTICATION_BACKENDS.

    Called as ``authenticate(request, source=<SyncSource or slug>, code=<OAuthCode or str>)``; other
    credentials are not its business (it answers None, and the next backend is asked).
    """

    def authenticate(self, request: Any, code: Any = None, source: Any = None, **kwargs: Any) -> Any:
        """Return the member's Django user for a WeCom OAuth code, or None (reason on request.wecom_login_error)."""
        if code is None or source is None or kwargs:
            return None
        if not isinstance(source, SyncSource):
            source = SyncSource.objects.filter(slug=str(source)).first()
        value = code.value if isinstance(code, OAuthCode) else str(code)
        try:
            if source is None:
                raise LoginError("source_unavailable")
            user = authenticate_code(source, value)
        except LoginError as exc:
            log_failure(exc.reason, source, exc.errcode)
            if request is not None:
                request.wecom_login_error = exc
            return None
        logger.info("wecom_sync.login.authenticated", extra={"source_id": source.pk, "user_id": user.pk})
        return user

    def get_user(self, user_id: Any) -> Any:
        """Return the active user with this primary key, or None."""
        model = get_user_model()
        try:
            user = model._default_manager.get(pk=user_id)
        except model.DoesNotExist:
            return None
        return user if getattr(user, "is_active", True) else None
