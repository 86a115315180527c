"""Sign in with WeCom: the view that sends the browser to WeCom and the view WeCom sends it back to.

``login/<slug>/?next=`` picks the page: inside the WeCom client (user agent containing ``wxwork``) the OAuth2
authorize redirect (silent), elsewhere the web login (QR code). It binds a random ``state`` to the session.
``login/<slug>/callback/`` takes that state back once (single use, short-lived), hands the code to
``django.contrib.auth.authenticate`` (``wecom_sync.auth.WeComBackend`` answers), logs the user in with
``django.contrib.auth.login`` (so ``user_logged_in`` fires as usual) and redirects to ``next`` if it is on this
site. Any refusal is shown on a page in the reader's language, with what to do about it.
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import authenticate, login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import resolve_url
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .auth import BACKEND_PATH, LoginError, OAuthCode, log_failure
from .conf import app_settings
from .models import SECRETS_UNREADABLE_MESSAGE, SyncSource

#: Session key holding the pending sign-ins: {state: {"slug", "next", "at"}}.
SESSION_KEY = "wecom_sync_login"
#: Pending sign-ins kept per session (several tabs may start one).
MAX_PENDING = 5
#: Substring of the WeCom client's user agent.
CLIENT_UA_MARK = "wxwork"

# reason -> (HTTP status, title, what happened, what to do)
REASONS: dict[str, tuple[int, Any, Any, Any]] = {
    "source_unavailable": (404, _("Sign-in with WeCom is not available"),
        _("This WeCom sign-in does not exist, or is switched off."),
        _("Ask the site's administrator to switch on “sign in with WeCom” for this source.")),
    "config": (503, _("Sign-in with WeCom is not set up"),
        _("The site cannot ask WeCom who you are: the source has no AgentId or Secret, or the WeCom "
          "authentication backend is not installed."),
        _("Administrator: set the AgentId and Secret of the source, and add wecom_sync.auth.WeComBackend to "
          "AUTHENTICATION_BACKENDS.")),
    "secrets_unreadable": (503, _("Sign-in with WeCom is not available right now"),
        _("The site cannot read the credentials it uses to ask WeCom who you are."),
        format_lazy(_("Administrator: the source's {message}."), message=SECRETS_UNREADABLE_MESSAGE)),
    "state_missing": (400, _("The sign-in could not be verified"),
        _("WeCom sent you back without the state of this sign-in."),
        _("Start again from the login page.")),
    "state_invalid": (400, _("The sign-in could not be verified"),
        _("This sign-in was not started in this browser, or was already used."),
        _("Start again from the login page, in the same browser.")),
    "state_expired": (400, _("The sign-in took too long"),
        _("This sign-in expired before WeCom sent you back."),
        _("Start again from the login page and confirm in WeCom within a few minutes.")),
    "code_missing": (400, _("WeCom did not confirm the sign-in"),
        _("WeCom sent you back without a code; the sign-in may have been cancelled."),
        _("Start again from the login page.")),
    "code_reused": (400, _("This sign-in was already used"),
        _("A WeCom sign-in code is valid once."),
        _("Start again from the login page.")),
    "code_invalid": (400, _("WeCom did not accept the sign-in"),
        _("The code WeCom gave is invalid or expired (codes are valid once, for 5 minutes)."),
        _("Start again from the login page.")),
    "ip_not_trusted": (502, _("This server is not allowed to call WeCom"),
        _("WeCom refused the call because this server's IP is not a trusted IP of the company."),
        _("Administrator: in the WeCom console, add this IP to the app's trusted IPs (企业可信IP) and wait "
          "about a minute.")),
    "untrusted_domain": (502, _("This site is not a trusted domain of the WeCom app"),
        _("WeCom refused the sign-in because this site's domain is not the app's trusted domain."),
        _("Administrator: in the WeCom console, set this site's domain as the app's trusted domain (可信域名) "
          "and as the web login's authorization callback domain, and verify it with the WW_verify file.")),
    "outside_visible_range": (403, _("You are outside this app's visible range"),
        _("WeCom says you may not use the app that signs in to this site."),
        _("Ask your WeCom administrator to add you (or your department) to the app's visible range.")),
    "api_error": (502, _("WeCom refused the sign-in"),
        _("WeCom answered with an error."),
        _("Try again; if it persists, tell the site's administrator the error code below.")),
    "api_unreachable": (502, _("WeCom could not be reached"),
        _("The site could not reach WeCom to check the sign-in."),
        _("Try again in a moment.")),
    "not_member": (403, _("You are not a member of this company"),
        _("WeCom says the person signing in is not a member of the company's directory."),
        _("Sign in with the WeCom account of your company.")),
    "not_mapped": (403, _("No account on this site yet"),
        _("You are a member in WeCom, but the site has no account for you yet."),
        _("Try again after the next directory sync, or ask the site's administrator.")),
    "outside_scope": (403, _("No account on this site"),
        _("Your department is not among the departments this site mirrors."),
        _("Ask the site's administrator.")),
    "member_gone": (403, _("No account on this site"),
        _("WeCom no longer lists you in the directory."),
        _("Ask your WeCom administrator.")),
    "provision_failed": (503, _("Your account could not be created"),
        _("The site tried to create your account from WeCom and failed."),
        _("Try again; the site's administrator can see the failure in the sync runs.")),
    "mapping_removed": (403, _("Your account is no longer active"),
        _("You are no longer in the part of the WeCom directory this site mirrors."),
        _("Ask the site's administrator.")),
    "member_status": (403, _("Your account is not active in WeCom"),
        _("WeCom lists you as disabled, not yet activated or as having left the company."),
        _("Ask your WeCom administrator.")),
    "no_account": (403, _("No account on this site"),
        _("Your WeCom membership is not linked to an account of this site."),
        _("Ask the site's administrator to link your account.")),
    "account_inactive": (403, _("Your account is deactivated"),
        _("Your account on this site is deactivated."),
        _("Ask the site's administrator.")),
}


def in_wecom_client(request: HttpRequest) -> bool:
    """Whether the request comes from the WeCom client's built-in browser."""
    return CLIENT_UA_MARK in request.META.get("HTTP_USER_AGENT", "").lower()


def safe_next(request: HttpRequest, value: str | None) -> str:
    """Return ``value`` if it points to this site, else LOGIN_REDIRECT_URL."""
    if value and url_has_allowed_host_and_scheme(
        value, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return value
    return resolve_url(settings.LOGIN_REDIRECT_URL)


def _with_query(base: str, params: list[tuple[str, Any]]) -> str:
    """Append query parameters to a URL that may already have some, in this order (WeCom checks it)."""
    return base + ("&" if "?" in base else "?") + urlencode([(k, str(v)) for k, v in params])


def authorize_url(source: SyncSource, redirect_uri: str, state: str, *, in_client: bool) -> str:
    """The WeCom page to send the browser to: the in-client OAuth2 page or the web login (QR code)."""
    agent = [("agentid", agent_id)] if (agent_id := source.login_agent_id or source.agent_id) else []
    if in_client and source.login_silent_in_client:
        return _with_query(app_settings.OAUTH_AUTHORIZE_URL, [
            ("appid", source.corp_id), ("redirect_uri", redirect_uri), ("response_type", "code"),
            ("scope", "snsapi_base"), ("state", state), *agent,
        ]) + "#wechat_redirect"
    return _with_query(app_settings.WEB_LOGIN_URL, [
        ("login_type", "CorpApp"), ("appid", source.corp_id), *agent, ("redirect_uri", redirect_uri),
        ("state", state),
    ])


def login_url(source: SyncSource, next_url: str = "") -> str:
    """The path that starts a sign-in with this source, with ``next`` when given."""
    path = reverse("wecom_sync:login", kwargs={"slug": source.slug})
    return f"{path}?{urlencode({'next': next_url})}" if next_url else path


def error_page(request: HttpRequest, error: LoginError, source: SyncSource | None = None,
               next_url: str = "") -> HttpResponse:
    """Render the page that explains a refused sign-in."""
    status, title, message, hint = REASONS.get(error.reason, REASONS["api_error"])
    context = {
        "title": title,
        "message": message,
        "hint": hint,
        "reason": error.reason,
        "errcode": error.errcode,
        "ip": error.ip,
        "retry_url": login_url(source, next_url) if source is not None and error.reason != "source_unavailable"
        else "",
        "login_page_url": resolve_url(settings.LOGIN_URL),
    }
    response = TemplateResponse(request, "wecom_sync/login_error.html", context, status=status)
    response["Cache-Control"] = "no-store"
    return response


def _take_code(request: HttpRequest) -> str:
    """Return the OAuth code of the request and mask it in the request, so that no log or error report
    (Django logs 4xx and 5xx responses with the request) can show it."""
    code = request.GET.get("code", "")
    if code:
        masked = request.GET.copy()
        masked["code"] = "********"
        masked._mutable = False  # read-only again, like the request's own QueryDict
        request.GET = masked  # type: ignore[assignment]  # a QueryDict, as before
        request.META["QUERY_STRING"] = masked.urlencode(safe="*")
    return code


def _source(slug: str) -> SyncSource | None:
    return SyncSource.objects.filter(slug=slug, enabled=True, login_enabled=True).first()


@never_cache
@require_GET
def login_start(request: HttpRequest, slug: str) -> HttpResponse:
    """Send the browser to WeCom to sign in with the source ``slug``; ``?next=`` is where to go afterwards."""
    source = _source(slug)
    next_url = request.GET.get("next", "")
    if source is None:
        log_failure("source_unavailable")
        return error_page(request, LoginError("source_unavailable"))
    now = time.time()
    max_age = app_settings.LOGIN_STATE_MAX_AGE
    pending = {
        state: entry for state, entry in (request.session.get(SESSION_KEY) or {}).items()
        if isinstance(entry, dict) and now - float(entry.get("at", 0)) < max_age
    }
    for old in sorted(pending, key=lambda s: pending[s]["at"])[: max(0, len(pending) - MAX_PENDING + 1)]:
        del pending[old]
    state = secrets.token_urlsafe(24)
    pending[state] = {"slug": source.slug, "next": safe_next(request, next_url) if next_url else "", "at": now}
    request.session[SESSION_KEY] = pending
    redirect_uri = request.build_absolute_uri(reverse("wecom_sync:login_callback", kwargs={"slug": source.slug}))
    return HttpResponseRedirect(authorize_url(source, redirect_uri, state, in_client=in_wecom_client(request)))


@never_cache
@require_GET
def login_callback(request: HttpRequest, slug: str) -> HttpResponse:
    """Finish a sign-in: check the state once, exchange the code, log the member in, go to ``next``."""
    code = _take_code(request)
    source = _source(slug)
    if source is None:
        log_failure("source_unavailable")
        return error_page(request, LoginError("source_unavailable"))
    state = request.GET.get("state", "")
    pending = dict(request.session.get(SESSION_KEY) or {})
    entry = pending.pop(state, None) if state else None
    if entry is not None:
        request.session[SESSION_KEY] = pending  # single use: gone whatever happens next
    next_url = entry.get("next", "") if isinstance(entry, dict) else ""
    reason = ""
    if not state:
        reason = "state_missing"
    elif not isinstance(entry, dict) or entry.get("slug") != source.slug:
        reason = "state_invalid"
    elif time.time() - float(entry.get("at", 0)) >= app_settings.LOGIN_STATE_MAX_AGE:
        reason = "state_expired"
    elif not code:
        reason = "code_missing"
    if reason:
        log_failure(reason, source)
        return error_page(request, LoginError(reason), source, next_url)
    user = authenticate(request, source=source, code=OAuthCode(code))
    if user is None:
        error = getattr(request, "wecom_login_error", None)
        if not isinstance(error, LoginError):
            error = LoginError("config")  # WeComBackend is not in AUTHENTICATION_BACKENDS
            log_failure(error.reason, source)
        return error_page(request, error, source, next_url)
    login(request, user, backend=getattr(user, "backend", None) or BACKEND_PATH)
    return HttpResponseRedirect(safe_next(request, next_url))
