"""change_contact event XML as WeCom sends it (shared/wecom-protocol.md §5), and its encrypted delivery."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import requests

from wecom_sync.crypto import WeComCrypto

logger = logging.getLogger("wecom_sync.simulator")

USER_CHANGE_TYPES = ("create_user", "update_user", "delete_user")
PARTY_CHANGE_TYPES = ("create_party", "update_party", "delete_party")


def _cdata(value: str) -> str:
    # "]]>" cannot appear inside one CDATA section: split it across two.
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _join(values: Sequence[Any]) -> str:
    return ",".join(str(v) for v in values)


def _extattr_xml(extattr: Mapping[str, Any] | None) -> str:
    items = []
    for attr in (extattr or {}).get("attrs") or ():
        kind = int(attr.get("type") or 0)
        inner = f"<Name>{_cdata(str(attr.get('name', '')))}</Name><Type>{kind}</Type>"
        if kind == 1:
            web = attr.get("web") or {}
            title, url = _cdata(str(web.get("title", ""))), _cdata(str(web.get("url", "")))
            inner += f"<Web><Title>{title}</Title><Url>{url}</Url></Web>"
        else:
            inner += f"<Text><Value>{_cdata(str((attr.get('text') or {}).get('value', '')))}</Value></Text>"
        items.append(f"<Item>{inner}</Item>")
    return "<ExtAttr>" + "".join(items) + "</ExtAttr>"


def event_xml(corp_id: str, change_type: str, fields: Sequence[tuple[str, Any]], create_time: int) -> str:
    """Return a plaintext change_contact event: common header, then ``fields`` in order."""
    parts = [
        f"<ToUserName>{_cdata(corp_id)}</ToUserName>",
        f"<FromUserName>{_cdata('sys')}</FromUserName>",
        f"<CreateTime>{int(create_time)}</CreateTime>",
        f"<MsgType>{_cdata('event')}</MsgType>",
        f"<Event>{_cdata('change_contact')}</Event>",
        f"<ChangeType>{_cdata(change_type)}</ChangeType>",
    ]
    for name, value in fields:
        if name == "ExtAttr":
            parts.append(_extattr_xml(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"<{name}>{value}</{name}>")
        else:
            parts.append(f"<{name}>{_cdata(str(value))}</{name}>")
    return "<xml>" + "".join(parts) + "</xml>"


def user_fields(
    change_type: str, user: Mapping[str, Any], *, full: bool, new_userid: str | None = None,
    changed: Sequence[str] | None = None,
) -> list[tuple[str, Any]]:
    """Return the fields of a member event: ids only (after 2022-08-15) unless ``full``.

    For update_user with ``full``, ``changed`` limits the attributes to those that changed, as WeCom does.
    """
    fields: list[tuple[str, Any]] = [("UserID", user["userid"])]
    if new_userid:
        fields.append(("NewUserID", new_userid))
    if change_type == "delete_user":
        return fields
    if not full:
        fields.append(("Department", _join(user.get("department") or ())))
        return fields
    full_fields: list[tuple[str, str, Any]] = [
        ("Name", "name", user.get("name", "")),
        ("Department", "department", _join(user.get("department") or ())),
        ("MainDepartment", "main_department", user.get("main_department")),
        ("IsLeaderInDept", "is_leader_in_dept", _join(user.get("is_leader_in_dept") or ())),
        ("DirectLeader", "direct_leader", _join(user.get("direct_leader") or ())),
        ("Position", "position", user.get("position")),
        ("Mobile", "mobile", user.get("mobile")),
        ("Gender", "gender", user.get("gender")),
        ("Email", "email", user.get("email")),
        ("BizMail", "biz_mail", user.get("biz_mail")),
        ("Status", "status", user.get("status")),
        ("Avatar", "avatar", user.get("avatar")),
        ("Alias", "alias", user.get("alias")),
        ("Telephone", "telephone", user.get("telephone")),
        ("Address", "address", user.get("address")),
        ("ExtAttr", "extattr", user.get("extattr")),
    ]
    for tag, key, value in full_fields:
        if value is None:
            continue
        if changed is not None and key not in changed and tag != "Department":
            continue
        if tag in ("MainDepartment", "Status", "Gender"):
            value = int(value) if str(value).lstrip("-").isdigit() else value
        fields.append((tag, value))
    return fields


def department_fields(change_type: str, department: Mapping[str, Any], *, full: bool) -> list[tuple[str, Any]]:
    """Return the fields of a department event: Id and ParentId only (after 2022-08-15) unless ``full``."""
    fields: list[tuple[str, Any]] = [("Id", int(department["id"]))]
    if change_type == "delete_party":
        return fields
    if full:
        fields.append(("Name", department.get("name", "")))
    fields.append(("ParentId", int(department.get("parentid") or 0)))
    if full and change_type == "create_party":
        fields.append(("Order", int(department.get("order") or 0)))
    return fields


class CallbackTarget:
    """Where and how the simulator delivers events: URL, Token and EncodingAESKey of the receiver."""

    def __init__(self, corp_id: str, url: str, token: str, encoding_aes_key: str) -> None:
        self.url = url
        self.crypto = WeComCrypto(token, encoding_aes_key, receive_id=corp_id)

    def __repr__(self) -> str:
        return f"CallbackTarget(url={self.url!r})"

    def build(self, event: str, timestamp: int | None = None) -> tuple[str, dict[str, str]]:
        """Return (encrypted POST body, signed query params) for a plaintext event."""
        nonce = str(secrets.randbelow(10**10))
        return self.crypto.envelope_xml(event, nonce, timestamp if timestamp is not None else int(time.time()))

    def deliver(self, event: str, session: requests.Session | None = None, timeout: float = 10.0) -> requests.Response:
        """POST a plaintext event, encrypted and signed, to the receiver and return its response."""
        body, params = self.build(event)
        poster = session or requests
        return poster.post(
            self.url,
            params=params,
            data=body.encode("utf-8"),
            headers={"Content-Type": "text/xml; charset=utf-8"},
            timeout=timeout,
        )


class Clock:
    """CreateTime source that never repeats: max(now, last + 1), so events on one object stay distinct."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            self._last = max(int(time.time()), self._last + 1)
            return self._last
