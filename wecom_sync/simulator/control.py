"""The standalone simulator's control API: change the directory over HTTP and deliver the callbacks.

``python -m wecom_sync.simulator`` serves the WeCom API and, beside it, these JSON endpoints (POST bodies
are JSON objects; every answer is ``{"errcode": 0, ...}`` or ``{"errcode": N, "errmsg": "..."}``):

- ``GET  /control/info``: credentials, the callback target and the directory's size;
- ``POST /control/callback``: ``{"url", "token"?, "encoding_aes_key"?}``: where events are delivered;
- ``POST /control/users``: a user/get-shaped member (``userid``, ``name``, ``department``);
- ``POST /control/users/<userid>/update``: fields to change; ``/move``: ``{"department", "main_department"?}``;
  ``/disable``, ``/enable``, ``/delete``;
- ``POST /control/departments``: ``{"name", "id"?, "parentid"?}``;
- ``POST /control/departments/<id>/update``: fields; ``/move``: ``{"parentid"}``; ``/delete``.

Each change answers with the event it produced and, when a callback target is set, the HTTP status of its
delivery. The API has no authentication: it is a test fake and listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from .org import Organisation
from .server import SimulatorError, WeComSimulator, errmsg

CONTROL_PREFIX = "/control/"


def credentials_from_seed(seed: int) -> dict[str, str]:
    """Return a fake Corp ID, app Secret, contact-sync Secret, Token and EncodingAESKey derived from ``seed``.

    The same seed gives the same credentials, so a sync source configured once keeps working after a restart.
    """
    rng = random.Random(f"wecom-simulator-credentials-{seed}")  # noqa: S311 - fake credentials of a test fake
    letters = string.ascii_letters + string.digits

    def word(n: int) -> str:
        return "".join(rng.choice(letters) for _ in range(n))

    key = base64.b64encode(bytes(rng.randrange(256) for _ in range(32))).decode().rstrip("=")
    return {
        "corp_id": "ww" + "".join(rng.choice("0123456789abcdef") for _ in range(16)),
        "app_secret": word(43),
        "contact_sync_secret": word(43),
        "token": word(32),
        "encoding_aes_key": key.replace("+", "x").replace("/", "y")[:43],
    }


class StandaloneSimulator(WeComSimulator):
    """The simulator plus the control API, the Token and EncodingAESKey it signs callbacks with."""

    def __init__(self, org: Organisation | None = None, *, token: str, encoding_aes_key: str,
                 **kwargs: Any) -> None:
        super().__init__(org, **kwargs)
        self.token = token
        self.encoding_aes_key = encoding_aes_key
        self.callback_url = ""

    def set_callback(self, url: str, token: str | None = None, encoding_aes_key: str | None = None) -> None:
        """Deliver later events to ``url`` (Token and EncodingAESKey default to the simulator's own)."""
        self.token = token or self.token
        self.encoding_aes_key = encoding_aes_key or self.encoding_aes_key
        self.callback_url = url
        super().set_callback(url, self.token, self.encoding_aes_key)

    def info(self) -> dict[str, Any]:
        """Return everything a sync source needs, plus the directory's size."""
        return {
            "api_base_url": self.base_url,
            "corp_id": self.corp_id,
            "agent_id": self.agent_id,
            "app_secret": self.app_secret,
            "contact_sync_secret": self.contact_sync_secret,
            "token": self.token,
            "encoding_aes_key": self.encoding_aes_key,
            "callback_url": self.callback_url,
            "users": len(self.org.users),
            "departments": len(self.org.departments),
        }

    def dispatch(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """Answer the control API under /control/, and the WeCom API everywhere else."""
        if not path.startswith(CONTROL_PREFIX):
            return super().dispatch(method, path, query, body)
        try:
            payload = json.loads(body.decode("utf-8")) if body else {}
            if not isinstance(payload, dict):
                raise SimulatorError(40058, "the body must be a JSON object")
            answer = self._control(method, path[len(CONTROL_PREFIX):].strip("/").split("/"), payload)
        except SimulatorError as exc:
            answer = {"errcode": exc.errcode or 40058, "errmsg": str(exc) or errmsg(exc.errcode)}
        except (ValueError, TypeError, KeyError) as exc:
            answer = {"errcode": 40058, "errmsg": f"invalid request: {exc}"}
        return 200, json.dumps(answer, ensure_ascii=False).encode("utf-8")

    def _control(self, method: str, parts: list[str], payload: dict[str, Any]) -> dict[str, Any]:
        parts = [unquote(p) for p in parts]
        if parts == ["info"]:
            return {"errcode": 0, **self.info()}
        if method != "POST":
            raise SimulatorError(43002, "the control API changes things with POST")
        if parts == ["callback"]:
            if not payload.get("url"):
                raise SimulatorError(40058, "url is required")
            self.set_callback(str(payload["url"]), payload.get("token"), payload.get("encoding_aes_key"))
            return {"errcode": 0, "callback_url": self.callback_url}
        if parts == ["users"]:
            return self._changed(lambda: self.add_user(payload))
        if parts == ["departments"]:
            return self._changed(lambda: self.add_department(payload))
        if len(parts) == 3 and parts[0] == "users":
            return self._changed(self._user_action(parts[1], parts[2], payload))
        if len(parts) == 3 and parts[0] == "departments":
            return self._changed(self._department_action(int(parts[1]), parts[2], payload))
        raise SimulatorError(40058, "unknown control path: /control/" + "/".join(parts))

    def _user_action(self, userid: str, action: str, payload: dict[str, Any]) -> Callable[[], str]:
        actions: dict[str, Callable[[], str]] = {
            "update": lambda: self.update_user(userid, **payload),
            "move": lambda: self.move_user(userid, list(payload["department"]), payload.get("main_department")),
            "disable": lambda: self.set_user_status(userid, 2),
            "enable": lambda: self.set_user_status(userid, 1),
            "delete": lambda: self.delete_user(userid),
        }
        if action not in actions:
            raise SimulatorError(40058, f"unknown member action {action!r}")
        return actions[action]

    def _department_action(self, dept_id: int, action: str, payload: dict[str, Any]) -> Callable[[], str]:
        actions: dict[str, Callable[[], str]] = {
            "update": lambda: self.update_department(dept_id, **payload),
            "move": lambda: self.move_department(dept_id, int(payload["parentid"])),
            "delete": lambda: self.delete_department(dept_id),
        }
        if action not in actions:
            raise SimulatorError(40058, f"unknown department action {action!r}")
        return actions[action]

    def _changed(self, change: Callable[[], str]) -> dict[str, Any]:
        delivered_before = len(self.deliveries)
        event = change()
        status = self.deliveries[-1][1] if len(self.deliveries) > delivered_before else None
        return {"errcode": 0, "event": event, "delivered": status is not None, "delivery_status": status}
