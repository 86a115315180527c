"""Sign in with WeCom, simulated: the OAuth2 authorize redirect, the web login page and ``auth/getuserinfo``.

- ``GET /connect/oauth2/authorize?appid&redirect_uri&response_type=code&scope&state&agentid``: inside the WeCom
  client the member is known: with ``client_userid`` set it redirects straight back with a code; without, it
  shows the member picker (as the web login does).
- ``GET /wwlogin/sso/login?login_type=CorpApp&appid&agentid&redirect_uri&state``: the web login, an HTML page
  where a person picks or types a member (standing in for scanning the QR code); ``POST
  /wwlogin/sso/confirm`` redirects back to ``redirect_uri`` with ``code`` and ``state``.
- ``auth/getuserinfo?access_token&code``: ``{"userid": ...}`` for a member (``UserId`` when ``legacy_userid_key``
  is on), ``{"openid": ...}`` for someone no longer in the directory, 50002 outside the app's visible range,
  40029 for an unknown, used or expired code (codes are valid once, for ``code_ttl`` seconds).

Plain Python, like the rest of the simulator. Like WeCom, it does not stop a disabled member here: refusing
them is the site's job, and tests need to see that it does.
"""

from __future__ import annotations

import html
import logging
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

if TYPE_CHECKING:
    from .server import WeComSimulator

logger = logging.getLogger("wecom_sync.simulator")

AUTHORIZE_PATH = "/connect/oauth2/authorize"
WEB_LOGIN_PATH = "/wwlogin/sso/login"
CONFIRM_PATH = "/wwlogin/sso/confirm"
PAGE_PATHS = frozenset({AUTHORIZE_PATH, WEB_LOGIN_PATH, CONFIRM_PATH})
#: Members listed on the picker page (the rest can be typed).
PICKER_LIMIT = 50

Reply = tuple[int, dict[str, str], bytes]


def _page(title: str, body: str, status: int = 200) -> Reply:
    text = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:640px;margin:40px auto}"
            "button{margin:3px;padding:6px 10px}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")
    return status, {"Content-Type": "text/html; charset=UTF-8"}, text.encode("utf-8")


def _error_page(message: str) -> Reply:
    return _page("WeCom simulator: sign-in refused", f"<p id='sim-login-error'>{html.escape(message)}</p>", 400)


class LoginPages:
    """The sign-in part of a WeComSimulator: login codes, the pages, and the getuserinfo answer."""

    def __init__(self, simulator: WeComSimulator, *, code_ttl: float = 300.0) -> None:
        self.simulator = simulator
        self.code_ttl = code_ttl
        #: The member signed in to the simulated WeCom client: the in-client OAuth2 page answers for them.
        self.client_userid: str | None = None
        #: Answer getuserinfo with the older key ``UserId`` instead of ``userid``.
        self.legacy_userid_key = False
        #: Hosts accepted in redirect_uri (the app's trusted domain); None accepts any host.
        self.trusted_hosts: set[str] | None = None
        self._codes: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    # -- codes ----------------------------------------------------------------------------------------
    def issue_code(self, userid: str) -> str:
        """Return a new login code for a member (as if they had confirmed in WeCom)."""
        code = secrets.token_urlsafe(24)
        with self._lock:
            now = time.time()
            self._codes = {c: v for c, v in self._codes.items() if v[1] > now}
            self._codes[code] = (userid, now + self.code_ttl)
        return code

    def take_code(self, code: str) -> str | None:
        """Return the userid of a valid code and invalidate it (valid once); None if unknown or expired."""
        with self._lock:
            entry = self._codes.pop(code, None)
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0]

    # -- API ------------------------------------------------------------------------------------------
    def getuserinfo(self, query: dict[str, str], visible: set[int] | None) -> tuple[int, dict[str, Any]]:
        """Answer auth/getuserinfo: (errcode, payload)."""
        userid = self.take_code(query.get("code", ""))
        if userid is None:
            return 40029, {}
        user = self.simulator.org.find_user(userid)
        if user is None:
            return 0, {"openid": "sim-openid-" + secrets.token_hex(8)}
        if visible is not None and not visible.intersection(user.get("department") or ()):
            return 50002, {}
        return 0, {("UserId" if self.legacy_userid_key else "userid"): user["userid"]}

    # -- pages ----------------------------------------------------------------------------------------
    def serve(self, method: str, path: str, query: dict[str, str], body: bytes) -> Reply | None:
        """Answer a sign-in page request, or None when ``path`` is not one of them."""
        if path not in PAGE_PATHS:
            return None
        try:
            return self._serve(method, path, query, body)
        except Exception:  # a simulator bug must show as a server error, not as a dropped connection
            logger.exception("wecom_sync.simulator.login_page_failed", extra={"path": path})
            return 500, {"Content-Type": "text/html; charset=UTF-8"}, b"<html><body>500</body></html>"

    def _serve(self, method: str, path: str, query: dict[str, str], body: bytes) -> Reply:
        if path == CONFIRM_PATH:
            if method != "POST":
                return _error_page("Confirm with POST.")
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            return self._confirm(form)
        if method != "GET":
            return _error_page("Use GET.")
        if path == AUTHORIZE_PATH:
            return self._authorize(query)
        return self._web_login(query)

    def _check(self, query: dict[str, str]) -> str:
        sim = self.simulator
        if query.get("appid") != sim.corp_id:
            return "appid is not this company's Corp ID."
        redirect_uri = query.get("redirect_uri", "")
        parts = urlsplit(redirect_uri)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return "redirect_uri must be an absolute http(s) URL."
        if self.trusted_hosts is not None and parts.hostname not in self.trusted_hosts:
            return "redirect_uri is not on the app's trusted domain (可信域名)."
        if str(query.get("agentid", "")) != str(sim.agent_id):
            return "agentid is not this app's AgentId."
        return ""

    def _authorize(self, query: dict[str, str]) -> Reply:
        problem = self._check(query)
        if not problem and query.get("response_type") != "code":
            problem = "response_type must be code."
        if not problem and query.get("scope") not in ("snsapi_base", "snsapi_privateinfo"):
            problem = "scope must be snsapi_base or snsapi_privateinfo."
        if problem:
            return _error_page(problem)
        if self.client_userid is not None:
            return self._back(query["redirect_uri"], query.get("state", ""), self.client_userid)
        return self._picker(query)

    def _web_login(self, query: dict[str, str]) -> Reply:
        problem = self._check(query)
        if not problem and query.get("login_type") != "CorpApp":
            problem = "login_type must be CorpApp."
        return _error_page(problem) if problem else self._picker(query)

    def _picker(self, query: dict[str, str], error: str = "") -> Reply:
        hidden = "".join(
            f"<input type='hidden' name='{name}' value='{html.escape(query.get(name, ''), quote=True)}'>"
            for name in ("appid", "agentid", "redirect_uri", "state")
        )
        users = sorted(self.simulator.org.users)[:PICKER_LIMIT]
        buttons = "".join(
            f"<button type='submit' name='userid' value='{html.escape(u, quote=True)}' class='sim-member' "
            f"data-userid='{html.escape(u, quote=True)}'>"
            f"{html.escape(str(self.simulator.org.users[u].get('name') or u))} ({html.escape(u)})</button>"
            for u in users
        )
        notice = f"<p id='sim-login-error' style='color:#b00'>{html.escape(error)}</p>" if error else ""
        body = (
            f"{notice}<p>Scan with WeCom, simulated: pick the member who confirms the sign-in.</p>"
            f"<form method='post' action='{CONFIRM_PATH}' id='sim-login-form'>{hidden}"
            "<p><label>userid <input name='typed_userid' id='sim-userid'></label> "
            "<button type='submit' id='sim-login-submit'>Sign in</button></p>"
            f"<div id='sim-members'>{buttons}</div></form>"
        )
        return _page("WeCom simulator: sign in", body)

    def _confirm(self, form: dict[str, str]) -> Reply:
        problem = self._check(form)
        if problem:
            return _error_page(problem)
        userid = (form.get("userid") or form.get("typed_userid") or "").strip()
        user = self.simulator.org.find_user(userid) if userid else None
        if user is None:
            return self._picker(form, "No such member in the directory.")
        return self._back(form["redirect_uri"], form.get("state", ""), user["userid"])

    def _back(self, redirect_uri: str, state: str, userid: str) -> Reply:
        code = self.issue_code(userid)
        location = redirect_uri + ("&" if "?" in redirect_uri else "?") + urlencode({"code": code, "state": state})
        return 302, {"Location": location, "Content-Type": "text/html; charset=UTF-8"}, b""
