"""The WeCom API simulator: a real HTTP server on 127.0.0.1 serving the directory APIs of an Organisation.

Response shapes and errcodes follow shared/wecom-protocol.md §1-3 and §6. Credentials are enforced: the
app secret and the contact-sync secret get different tokens with different rights.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests

from .events import CallbackTarget, Clock, department_fields, event_xml, user_fields
from .faults import API_PREFIX, GETTOKEN_PATH, Faults
from .login import LoginPages
from .messages import MessageSimulation
from .org import RESTRICTED_USER_FIELDS, Organisation, generate_organisation
from .tags import TagSimulation

logger = logging.getLogger("wecom_sync.simulator")

ERRMSGS: dict[int, str] = {
    -1: "system busy",
    40001: "invalid credential",
    40013: "invalid corpid",
    40014: "invalid access_token",
    40029: "invalid code",
    40008: "invalid message type",
    40056: "invalid agentid",
    40058: "invalid parameter",
    40068: "invalid tagid",
    40071: "UserTag Name Already Exist",
    41001: "access_token missing",
    41004: "corpsecret missing",
    42001: "access_token expired",
    43002: "require POST method",
    44004: "empty content",
    47001: "data format error",
    45009: "api freq out of limit",
    45033: "api concurrent out of limit",
    48002: "api forbidden",
    48009: "api forbidden for contact assistant",
    50002: "user out of agent privilege",
    60011: "no privilege to access/modify contact/party/agent",
    60020: "not allow to access from your ip",
    60111: "userid not found",
    60123: "invalid party id",
    60127: "missing department",
    81013: "user & party & tag all invalid",
    82001: "all touser & toparty & totag invalid",
    301002: "not allow operate another agent with this accesstoken",
}

APP = "app"
CONTACT_SYNC = "contact_sync"

#: APIs that return directory details: refused to the contact-sync secret when forbid_contact_detail is on.
_DETAIL_APIS = frozenset({"department/list", "department/get", "user/get", "user/list", "user/simplelist"})


class SimulatorError(ValueError):
    """A mutation that WeCom itself would refuse (unknown id, duplicate userid, non-empty department...)."""

    def __init__(self, errcode: int, message: str) -> None:
        self.errcode = errcode
        super().__init__(f"{errcode}: {message}")


def errmsg(errcode: int) -> str:
    """Return an errmsg shaped like WeCom's (text, hint, more-info link)."""
    text = ERRMSGS.get(errcode, "error")
    return (f"{text}, hint: [{int(time.time())}-sim{errcode}], from ip: 127.0.0.1, more info at "
            f"https://open.work.weixin.qq.com/devtool/query?e={errcode}")


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _error(errcode: int) -> tuple[int, bytes]:
    return 200, _dumps({"errcode": errcode, "errmsg": errmsg(errcode)})


def _ok(payload: dict[str, Any]) -> tuple[int, bytes]:
    return 200, _dumps({"errcode": 0, "errmsg": "ok", **payload})


@dataclass(slots=True)
class _Token:
    kind: str
    generation: int
    expired_generation: int
    expires_at: float


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, simulator: WeComSimulator, address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.simulator = simulator
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "WeComSimulator/1.0"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms per call.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def _serve(self, method: str) -> None:
        parsed = urlsplit(self.path)
        query = dict(parse_qsl(parsed.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        page = self.server.simulator.login.serve(method, parsed.path, query, body)
        if page is not None:  # the sign-in pages (HTML and redirects), see simulator/login.py
            self.send_response(page[0])
            for name, value in {**page[1], "Content-Length": str(len(page[2]))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(page[2])
            return
        try:
            status, payload = self.server.simulator.dispatch(method, parsed.path, query, body)
        except Exception:  # a simulator bug must show as a server error, not as a dropped connection
            logger.exception("wecom_sync.simulator.handler_failed", extra={"path": parsed.path})
            status, payload = 500, b"<html><body>500 Internal Server Error</body></html>"
        self.send_response(status)
        if status == 200:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        else:
            self.send_header("Content-Type", "text/html; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        return  # requests carry access tokens in the query string: never log them


class WeComSimulator(TagSimulation, MessageSimulation):
    """A WeCom API and callback simulator for tests, demos and benchmarks (context manager)."""

    def __init__(
        self,
        org: Organisation | None = None,
        *,
        corp_id: str = "wwsimcorp0001",
        app_secret: str = "sim-app-secret",  # noqa: S107 - a simulator's well-known test credential
        contact_sync_secret: str = "sim-contact-secret",  # noqa: S107
        agent_id: int = 1000002,
        token_ttl: int = 7200,
    ) -> None:
        self.org = org if org is not None else generate_organisation()
        self.corp_id = corp_id
        self.app_secret = app_secret
        self.contact_sync_secret = contact_sync_secret
        self.agent_id = agent_id
        self.token_ttl = token_ttl
        self.faults = Faults()
        self.calls: Counter[str] = Counter()
        # Requests being answered right now, and the most ever answered at once, per path: tests read
        # peak_in_flight to prove that clients really called in parallel.
        self.in_flight: Counter[str] = Counter()
        self.peak_in_flight: Counter[str] = Counter()
        self.events: list[str] = []
        self.deliveries: list[tuple[str, int]] = []
        self.messages: list[dict[str, Any]] = []
        self.unlicensed_users: set[str] = set()
        self.base_url = ""
        self._calls_lock = threading.Lock()
        self._lock = threading.RLock()
        self._tokens: dict[str, _Token] = {}
        self._clock = Clock()
        self._callback: CallbackTarget | None = None
        #: Department ids whose subtrees the app secret can see (its 可见范围); None: the whole directory.
        self.app_scope: set[int] | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._session = requests.Session()
        self._routes: dict[str, tuple[str, Callable[[dict[str, str], bytes, str], tuple[int, bytes]]]] = {
            "department/list": ("GET", self._department_list),
            "department/simplelist": ("GET", self._department_simplelist),
            "department/get": ("GET", self._department_get),
            "user/get": ("GET", self._user_get),
            "user/list": ("GET", self._user_list),
            "user/simplelist": ("GET", self._user_simplelist),
            "user/list_id": ("POST", self._user_list_id),
            "auth/getuserinfo": ("GET", self._auth_getuserinfo),
            "tag/list": ("GET", self._tag_list),
            "tag/get": ("GET", self._tag_get),
            "message/send": ("POST", self._message_send),
        }
        #: Sign in with WeCom: login codes, the authorize and web-login pages (simulator/login.py).
        self.login = LoginPages(self)

    def __repr__(self) -> str:
        return f"WeComSimulator(base_url={self.base_url!r}, corp_id={self.corp_id!r}, org={self.org!r})"

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> WeComSimulator:
        """Start serving in a background thread, on a free port of 127.0.0.1 unless told otherwise."""
        if self._server is not None:
            return self
        self._server = _Server(self, (host, port))
        bound_host, port = self._server.server_address[:2]
        self.base_url = f"http://{bound_host!s}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="wecom-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.connections_lock:
            for conn in list(server.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._session.close()

    def __enter__(self) -> WeComSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_app_scope(self, department_ids: Iterable[int] | None) -> None:
        """Limit what the app secret sees to these departments' subtrees (60011 outside); None: everything."""
        self.app_scope = None if department_ids is None else {int(d) for d in department_ids}

    def reset_calls(self) -> None:
        """Forget the call counts and the in-flight peaks."""
        with self._calls_lock:
            self.calls.clear()
            self.peak_in_flight.clear()

    # -- the API ------------------------------------------------------------------------------------
    def dispatch(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """Answer one API request: (HTTP status, body)."""
        with self._calls_lock:
            self.calls[path] += 1
            self.in_flight[path] += 1
            self.peak_in_flight[path] = max(self.peak_in_flight[path], self.in_flight[path])
        try:
            return self._dispatch(method, path, query, body)
        finally:
            with self._calls_lock:
                self.in_flight[path] -= 1

    def _dispatch(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, bytes]:
        delay = self.faults.delay_for(path)
        if delay:
            time.sleep(delay)
        fault = self.faults.take(path)
        if fault is not None:
            kind, value = fault
            if kind == "http":
                return value, f"<html><body>simulated HTTP {value}</body></html>".encode()
            return _error(value)
        if path == GETTOKEN_PATH:
            return self._gettoken(query)
        route = self._routes.get(path[len(API_PREFIX):]) if path.startswith(API_PREFIX) else None
        if route is None:
            return 404, b"<html><body>404 Not Found</body></html>"
        required_method, handler = route
        if method != required_method:
            return _error(43002 if required_method == "POST" else 40058)
        kind_or_error = self._check_token(query.get("access_token"))
        if isinstance(kind_or_error, int):
            return _error(kind_or_error)
        api = path[len(API_PREFIX):]
        if api == "user/list_id" and kind_or_error != CONTACT_SYNC:
            return _error(48002)
        if api in _DETAIL_APIS and kind_or_error == CONTACT_SYNC and self.faults.contact_detail_forbidden:
            return _error(48009)
        with self._lock:
            return handler(query, body, kind_or_error)

    def _gettoken(self, query: dict[str, str]) -> tuple[int, bytes]:
        if query.get("corpid") != self.corp_id:
            return _error(40013)
        secret = query.get("corpsecret")
        if not secret:
            return _error(41004)
        if secrets.compare_digest(secret.encode(), self.app_secret.encode()):
            kind = APP
        elif self.contact_sync_secret and secrets.compare_digest(secret.encode(), self.contact_sync_secret.encode()):
            kind = CONTACT_SYNC
        else:
            return _error(40001)
        token = secrets.token_urlsafe(96)
        with self._lock:
            now = time.time()
            self._tokens = {k: v for k, v in self._tokens.items() if v.expires_at > now}
            self._tokens[token] = _Token(kind, self.faults.tokens_generation, self.faults.tokens_expired_generation,
                                         now + self.token_ttl)
        return _ok({"access_token": token, "expires_in": self.token_ttl})

    def _check_token(self, token: str | None) -> str | int:
        """Return the token's kind, or the errcode that refuses it."""
        if not token:
            return 41001
        info = self._tokens.get(token)
        if info is None or info.generation < self.faults.tokens_generation:
            return 40014
        if info.expired_generation < self.faults.tokens_expired_generation or info.expires_at <= time.time():
            return 42001
        return info.kind

    @staticmethod
    def _int_param(query: dict[str, str], name: str) -> int | None:
        value = query.get(name)
        if value in (None, ""):
            return None
        try:
            return int(value)
        except ValueError:
            return -1

    def _visible(self, kind: str) -> set[int] | None:
        """Departments the token may see: None for all (contact-sync secret, or no app scope set)."""
        if kind == CONTACT_SYNC or self.app_scope is None:
            return None
        visible: set[int] = set()
        for dept_id in self.app_scope:
            if dept_id in self.org.departments:
                visible.update(self.org.subtree(dept_id))
        return visible

    def _view_user(self, user: dict[str, Any], visible: set[int] | None) -> dict[str, Any]:
        """A member as an app with a limited scope sees it: only the departments it can see."""
        if visible is None:
            return user
        keep = [i for i, d in enumerate(user.get("department") or ()) if d in visible]
        view = dict(user)
        for key in ("department", "order", "is_leader_in_dept"):
            values = user.get(key) or []
            view[key] = [values[i] for i in keep if i < len(values)]
        if user.get("main_department") not in visible:
            view.pop("main_department", None)
        return view

    def _department_ids(self, query: dict[str, str], kind: str) -> list[int] | int:
        dept_id = self._int_param(query, "id")
        visible = self._visible(kind)
        if dept_id is None:
            dept_id = 1 if 1 in self.org.departments else min(self.org.departments, default=1)
            if visible is not None:
                return [d for d in self.org.subtree(dept_id) if d in visible]
        if dept_id not in self.org.departments:
            return 60123
        if visible is not None and dept_id not in visible:
            return 60011
        return self.org.subtree(dept_id)

    def _department_list(self, query: dict[str, str], body: bytes, kind: str) -> tuple[int, bytes]:
        ids = self._department_ids(query, kind)
        if isinstance(ids, int):
            return _error(ids)
        departments = self.org.departments
        return _ok({"department": [departments[i] for i in ids]})

    def _department_simplelist(self, query: dict[str, str], body: bytes, kind: str) -> tuple[int, bytes]:
        ids = self._department_ids(query, kind)
        if isinstance(ids, int):
            return _error(ids)
        departments = self.org.departments
        return _ok({"department_id": [
            {"id": i, "parentid": departments[i].get("parentid", 0), "order": departments[i].get("order", 0)}
            for i in ids
        ]})

    def _department_get(self, query: dict[str, str], body: bytes, kind: str) -> tuple[int, bytes]:
        dept_id = self._int_param(query, "id")
        if dept_id is None or dept_id not in self.org.departments:
            return _error(60123)
        visible = self._visible(kind)
        if visible is not None and dept_id not in visible:
            return _error(60011)
        return _ok({"department": self.org.departments[dept_id]})

    def _user_get(self, query: dict[str, str], body: bytes, kind: str) -> tuple[int, bytes]:
        user = self.org.find_user(query.get("userid", ""))
        if user is None:
            return _error(60111)
        visible = self._visible(kind)
        if visible is not None and not visible.intersection(user.get("department") or ()):
            return _error(60011)
        return _ok(self._view_user(user, visible))

    def _members(self, query: dict[str, str], kind: str) -> list[dict[str, Any]] | int:
        dept_id = self._int_param(query, "department_id")
        if dept_id is None:
            return 60127
        if dept_id not in self.org.departments:
            return 60123
        visible = self._visible(kind)
        if visible is not None and dept_id not in visible:
            return 60011
        # fetch_child is gone from the current docs; honoured here for older clients (wechatpy sends it).
        dept_ids = self.org.subtree(dept_id) if query.get("fetch_child") == "1" else [dept_id]
        users = self.org.users
        seen: set[str] = set()
        out = []
        for current in dept_ids:
            for userid in self.org.index.members.get(current, ()):
                if userid not in seen:
                    seen.add(userid)
                    out.append(self._view_user(users[userid], visible))
        return out

    def _user_list(self, query: dict[str, str], body: bytes, kind: str) -> tuple[int, bytes]:
        members = self._members(query, kind)
        if isinstance(members, int):
            return _error(members)
        return _ok({"userlist": members})

    def _user_simplelist(self, query: dict[str, str], body: bytes, kind: str) -> tuple[int, bytes]:
        members = self._members(query, kind)
        if isinstance(members, int):
            return _error(members)
        return _ok({"userlist": [
            {"userid": u["userid"], "name": u.get("name", ""), "department": u.get("department", [])}
            for u in members
        ]})

    def _auth_getuserinfo(self, query: dict[str, str], body: bytes, kind: str) -> tuple[int, bytes]:
        if kind != APP:
            return _error(48002)
        errcode, payload = self.login.getuserinfo(query, self._visible(kind))
        return _error(errcode) if errcode else _ok(payload)

    def _user_list_id(self, query: dict[str, str], body: bytes, kind: str) -> tuple[int, bytes]:
        try:
            request = json.loads(body.decode("utf-8") or "{}") if body else {}
            cursor = str(request.get("cursor") or "")
            limit = int(request.get("limit", 10000))
        except (ValueError, TypeError, AttributeError):
            return _error(40058)
        if not 1 <= limit <= 10000:
            return _error(40058)
        if cursor:
            if not cursor.startswith("sim") or not cursor[3:].isdigit():
                return _error(40058)
            if self.faults.pagination == "error":
                return _error(40058)
            offset = int(cursor[3:])
        else:
            offset = 0
        rows = self.org.index.list_id_rows
        page = rows[offset:offset + limit]
        end = offset + len(page)
        next_cursor = f"sim{end}" if end < len(rows) and self.faults.pagination != "silent" else ""
        return _ok({"next_cursor": next_cursor, "dept_user": page})

    # -- callbacks ----------------------------------------------------------------------------------
    def set_callback(self, url: str, token: str, encoding_aes_key: str) -> None:
        """Deliver the events of later mutations to ``url``, signed and encrypted with these values."""
        self._callback = CallbackTarget(self.corp_id, url, token, encoding_aes_key)

    def build_callback(self, event_xml: str) -> tuple[str, dict[str, str]]:
        """Return (POST body, query params) of the signed, encrypted request that delivers ``event_xml``."""
        if self._callback is None:
            raise SimulatorError(0, "No callback target: call set_callback(url, token, encoding_aes_key) first.")
        return self._callback.build(event_xml)

    def _emit(self, change_type: str, fields: list[tuple[str, Any]], deliver: bool) -> str:
        event = event_xml(self.corp_id, change_type, fields, self._clock.next())
        self.events.append(event)
        if deliver and self._callback is not None:
            try:
                response = self._callback.deliver(event, self._session)
            except requests.RequestException as exc:
                raise SimulatorError(0, f"Callback delivery to {self._callback.url} failed: {exc}") from exc
            self.deliveries.append((event, response.status_code))
            logger.info("wecom_sync.simulator.delivered", extra={"change_type": change_type,
                                                                  "status_code": response.status_code})
        return event

    # -- mutations: users ---------------------------------------------------------------------------
    def _user(self, userid: str) -> dict[str, Any]:
        user = self.org.find_user(userid)
        if user is None:
            raise SimulatorError(60111, f"userid {userid!r} not found")
        return user

    def _check_departments(self, departments: Sequence[int]) -> list[int]:
        ids = [int(d) for d in departments]
        if not ids:
            raise SimulatorError(60127, "a member needs at least one department")
        missing = [d for d in ids if d not in self.org.departments]
        if missing:
            raise SimulatorError(60123, f"unknown departments {missing}")
        return ids

    def add_user(self, payload: dict[str, Any], *, deliver: bool = True, full_payload: bool = False) -> str:
        """Create a member from a user/get-shaped payload (userid, name, department required)."""
        with self._lock:
            userid = str(payload.get("userid") or "")
            if not userid or not payload.get("name"):
                raise SimulatorError(40058, "userid and name are required")
            if self.org.find_user(userid) is not None:
                raise SimulatorError(60102, f"userid {userid!r} already exists")
            departments = self._check_departments(payload.get("department") or [1])
            user: dict[str, Any] = {
                "userid": userid,
                "name": payload["name"],
                "department": departments,
                "order": [0] * len(departments),
                "position": "",
                "mobile": "",
                "gender": "0",
                "email": "",
                "biz_mail": "",
                "is_leader_in_dept": [0] * len(departments),
                "direct_leader": [],
                "avatar": "",
                "thumb_avatar": "",
                "telephone": "",
                "alias": "",
                "address": "",
                "main_department": departments[0],
                "status": 1,
                "qr_code": "",
                "external_position": "",
                "extattr": {"attrs": []},
            }
            user.update({k: v for k, v in payload.items() if k != "department"})
            if self.org.restricted_fields:
                for field in RESTRICTED_USER_FIELDS:
                    user.pop(field, None)
            self.org.users[userid] = user
            self.org.invalidate()
            fields = user_fields("create_user", user, full=full_payload)
        return self._emit("create_user", fields, deliver)

    def update_user(self, userid: str, *, deliver: bool = True, full_payload: bool = False, **fields: Any) -> str:
        """Change a member's attributes (not the userid: see rename_userid; departments: see move_user)."""
        if "userid" in fields:
            raise SimulatorError(40058, "use rename_userid() to change a userid")
        with self._lock:
            user = self._user(userid)
            changed = list(fields)
            if "department" in fields:
                departments = self._check_departments(fields.pop("department"))
                self._set_departments(user, departments, fields.pop("main_department", None))
                changed += ["main_department", "is_leader_in_dept"]
            elif "main_department" in fields and fields["main_department"] not in user["department"]:
                raise SimulatorError(40058, "main_department must be one of the departments")
            if self.org.restricted_fields:
                for field in RESTRICTED_USER_FIELDS:
                    fields.pop(field, None)
            user.update(fields)
            self.org.invalidate()
            payload = user_fields("update_user", user, full=full_payload, changed=changed)
        return self._emit("update_user", payload, deliver)

    def _set_departments(self, user: dict[str, Any], departments: list[int], main: int | None) -> None:
        old = dict(zip(user.get("department") or (), user.get("order") or (), strict=False))
        leaders = dict(zip(user.get("department") or (), user.get("is_leader_in_dept") or (), strict=False))
        user["department"] = departments
        user["order"] = [old.get(d, 0) for d in departments]
        user["is_leader_in_dept"] = [leaders.get(d, 0) for d in departments]
        if main is None:
            main = user.get("main_department") if user.get("main_department") in departments else departments[0]
        elif main not in departments:
            raise SimulatorError(40058, "main_department must be one of the departments")
        user["main_department"] = main
        for dept_id, dept in self.org.departments.items():
            if dept_id not in departments and user["userid"] in (dept.get("department_leader") or ()):
                dept["department_leader"] = [u for u in dept["department_leader"] if u != user["userid"]]

    def move_user(self, userid: str, departments: list[int], main_department: int | None = None, *,
                  deliver: bool = True, full_payload: bool = False) -> str:
        """Set a member's departments (orders and leader flags kept where the department stays)."""
        with self._lock:
            user = self._user(userid)
            self._set_departments(user, self._check_departments(departments), main_department)
            self.org.invalidate()
            payload = user_fields("update_user", user, full=full_payload,
                                  changed=["department", "main_department", "is_leader_in_dept"])
        return self._emit("update_user", payload, deliver)

    def set_user_status(self, userid: str, status: int, *, deliver: bool = True, full_payload: bool = False) -> str:
        """Change a member's status (1 activated, 2 disabled, 4 not activated, 5 exited)."""
        if int(status) not in (1, 2, 4, 5):
            raise SimulatorError(40058, "status must be 1, 2, 4 or 5")
        return self.update_user(userid, status=int(status), deliver=deliver, full_payload=full_payload)

    def rename_userid(self, old: str, new: str, *, deliver: bool = True, full_payload: bool = False) -> str:
        """Change a member's userid (WeCom sends update_user with NewUserID)."""
        with self._lock:
            user = self._user(old)
            if self.org.find_user(new) is not None:
                raise SimulatorError(60102, f"userid {new!r} already exists")
            previous = user["userid"]
            payload = user_fields("update_user", user, full=full_payload, new_userid=new, changed=[])
            del self.org.users[previous]
            user["userid"] = new
            self.org.users[new] = user
            self._replace_references(previous, new)
            self.org.invalidate()
        return self._emit("update_user", payload, deliver)

    def _replace_references(self, old: str, new: str | None) -> None:
        self._forget_in_tags(userid=old, new_userid=new)
        for dept in self.org.departments.values():
            leaders = dept.get("department_leader") or []
            if old in leaders:
                dept["department_leader"] = [new if u == old else u for u in leaders if new or u != old]
        for other in self.org.users.values():
            leaders = other.get("direct_leader") or []
            if old in leaders:
                other["direct_leader"] = [new if u == old else u for u in leaders if new or u != old]

    def delete_user(self, userid: str, *, deliver: bool = True, full_payload: bool = False) -> str:
        """Delete a member (user/get then answers 60111)."""
        with self._lock:
            user = self._user(userid)
            payload = user_fields("delete_user", user, full=full_payload)
            del self.org.users[user["userid"]]
            self._replace_references(user["userid"], None)
            self.org.invalidate()
        return self._emit("delete_user", payload, deliver)

    # -- mutations: departments ---------------------------------------------------------------------
    def _department(self, department_id: int) -> dict[str, Any]:
        dept = self.org.departments.get(int(department_id))
        if dept is None:
            raise SimulatorError(60123, f"department {department_id} not found")
        return dept

    def add_department(self, payload: dict[str, Any], *, deliver: bool = True, full_payload: bool = False) -> str:
        """Create a department from a department/get-shaped payload (name required; id and parentid optional)."""
        with self._lock:
            if not payload.get("name"):
                raise SimulatorError(40058, "name is required")
            dept_id = int(payload.get("id") or max(self.org.departments, default=0) + 1)
            if dept_id in self.org.departments:
                raise SimulatorError(60008, f"department {dept_id} already exists")
            parent = int(payload.get("parentid", 1))
            if parent not in self.org.departments:
                raise SimulatorError(60004, f"parent department {parent} not found")
            dept = {"id": dept_id, "name": payload["name"], "name_en": "", "department_leader": [],
                    "parentid": parent, "order": 0}
            dept.update({k: v for k, v in payload.items() if k not in ("id", "parentid")})
            self.org.departments[dept_id] = dept
            self.org.invalidate()
            fields = department_fields("create_party", dept, full=full_payload)
        return self._emit("create_party", fields, deliver)

    def update_department(self, id: int, *, deliver: bool = True, full_payload: bool = False,  # noqa: A002
                          **fields: Any) -> str:
        """Change a department's attributes (name, name_en, order, parentid, department_leader)."""
        with self._lock:
            dept = self._department(id)
            if "id" in fields:
                raise SimulatorError(40058, "a department id cannot change")
            if "parentid" in fields:
                parent = int(fields["parentid"])
                if parent not in self.org.departments:
                    raise SimulatorError(60004, f"parent department {parent} not found")
                if parent in self.org.subtree(dept["id"]):
                    raise SimulatorError(60010, "a department cannot move under itself")
                fields["parentid"] = parent
            dept.update(fields)
            self.org.invalidate()
            payload = department_fields("update_party", dept, full=full_payload)
        return self._emit("update_party", payload, deliver)

    def move_department(self, id: int, parent_id: int, *, deliver: bool = True,  # noqa: A002
                        full_payload: bool = False) -> str:
        """Move a department under another parent."""
        return self.update_department(id, parentid=parent_id, deliver=deliver, full_payload=full_payload)

    def delete_department(self, id: int, *, deliver: bool = True, full_payload: bool = False) -> str:  # noqa: A002
        """Delete an empty department (WeCom refuses the root, and departments with children or members)."""
        with self._lock:
            dept = self._department(id)
            if dept.get("parentid") in (0, None) or dept["id"] == 1:
                raise SimulatorError(60007, "the root department cannot be deleted")
            if self.org.children(dept["id"]):
                raise SimulatorError(60006, "the department has sub-departments")
            if self.org.members(dept["id"]):
                raise SimulatorError(60005, "the department has members")
            del self.org.departments[dept["id"]]
            self._forget_in_tags(department_id=dept["id"])
            self.org.invalidate()
            payload = department_fields("delete_party", dept, full=full_payload)
        return self._emit("delete_party", payload, deliver)
