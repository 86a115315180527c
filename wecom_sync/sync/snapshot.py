"""Plain data types for a directory snapshot, shared by the client (which fills them), the simulator and
the sync engine (which plans from them). No Django, no HTTP.

The shapes follow WeCom's JSON: ``RemoteDepartment.from_api`` takes a ``department/get`` or
``department/list`` item, ``RemoteUser.from_api`` a ``user/get`` or ``user/list`` item.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def normalize_userid(userid: str) -> str:
    """Return the comparison key of a userid: WeCom userids are case-insensitive."""
    return (userid or "").strip().lower()


def payload_digest(payload: Mapping[str, Any]) -> str:
    """Return a stable sha256 hex digest of a JSON-like payload (key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _int_list(value: Any) -> tuple[int, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    return tuple(_int(v) for v in value)


@dataclass(frozen=True, slots=True)
class RemoteDepartment:
    """A WeCom department as the API reports it."""

    id: int
    name: str = ""
    parent_id: int | None = None
    order: int = 0
    name_en: str = ""
    leaders: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> RemoteDepartment:
        """Build from a department/get, department/list or department/simplelist item."""
        parent = item.get("parentid")
        return cls(
            id=_int(item.get("id")),
            name=str(item.get("name") or ""),
            parent_id=None if parent in (None, "") else _int(parent),
            order=_int(item.get("order")),
            name_en=str(item.get("name_en") or ""),
            leaders=tuple(str(x) for x in (item.get("department_leader") or ())),
            raw=dict(item),
        )

    @property
    def digest(self) -> str:
        return payload_digest(self.raw)


@dataclass(frozen=True, slots=True)
class RemoteUser:
    """A WeCom member as the API reports it (user/get or user/list)."""

    userid: str
    name: str = ""
    departments: tuple[int, ...] = ()
    orders: tuple[int, ...] = ()
    is_leader_in_dept: tuple[int, ...] = ()
    main_department: int | None = None
    status: int = 1
    email: str = ""
    biz_mail: str = ""
    mobile: str = ""
    position: str = ""
    alias: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> RemoteUser:
        """Build from a user/get or user/list item."""
        main = item.get("main_department")
        return cls(
            userid=str(item.get("userid") or ""),
            name=str(item.get("name") or ""),
            departments=_int_list(item.get("department")),
            orders=_int_list(item.get("order")),
            is_leader_in_dept=_int_list(item.get("is_leader_in_dept")),
            main_department=None if main in (None, "", 0, "0") else _int(main),
            status=_int(item.get("status"), 1),
            email=str(item.get("email") or ""),
            biz_mail=str(item.get("biz_mail") or ""),
            mobile=str(item.get("mobile") or ""),
            position=str(item.get("position") or ""),
            alias=str(item.get("alias") or ""),
            raw=dict(item),
        )

    @property
    def key(self) -> str:
        return normalize_userid(self.userid)

    @property
    def digest(self) -> str:
        return payload_digest(self.raw)

    def memberships(self) -> list[tuple[int, int, bool, bool]]:
        """Return (department id, order, is_leader, is_main) for each department of the user."""
        out = []
        main = self.main_department if self.main_department is not None else (
            self.departments[0] if self.departments else None
        )
        for i, dept in enumerate(self.departments):
            order = self.orders[i] if i < len(self.orders) else 0
            leader = bool(self.is_leader_in_dept[i]) if i < len(self.is_leader_in_dept) else False
            out.append((dept, order, leader, dept == main))
        return out


@dataclass(frozen=True, slots=True)
class RemoteTag:
    """A WeCom tag as tag/get reports it: its name, the userids and the department ids it lists."""

    id: int
    name: str = ""
    userids: tuple[str, ...] = ()
    department_ids: tuple[int, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_api(cls, tag_id: int, item: Mapping[str, Any]) -> RemoteTag:
        """Build from a tag/get answer (``tagname``, ``userlist[{userid, name}]``, ``partylist[ids]``)."""
        users = []
        for entry in item.get("userlist") or ():
            userid = entry.get("userid") if isinstance(entry, Mapping) else entry
            if userid:
                users.append(str(userid))
        raw = {k: v for k, v in item.items() if k not in ("errcode", "errmsg")}
        raw.setdefault("tagid", int(tag_id))
        return cls(
            id=int(tag_id),
            name=str(item.get("tagname") or ""),
            userids=tuple(users),
            department_ids=_int_list(item.get("partylist")),
            raw=raw,
        )

    @property
    def digest(self) -> str:
        return payload_digest(self.raw)


@dataclass(slots=True)
class FetchProblem:
    """One part of a fetch that did not answer: where, the errcode (or None for transport) and a message."""

    scope: str
    errcode: int | None
    message: str


@dataclass(slots=True)
class Snapshot:
    """A fetched directory: departments by id, users by normalised userid, and whether it is complete.

    ``complete`` is True only when every page and every department answered with errcode 0: only then may
    the sync remove anything.
    """

    root_department_id: int = 1
    departments: dict[int, RemoteDepartment] = field(default_factory=dict)
    users: dict[str, RemoteUser] = field(default_factory=dict)
    problems: list[FetchProblem] = field(default_factory=list)
    api_calls: int = 0

    #: The tags, when tags were fetched (``WECOM_SYNC["SYNC_TAGS"]``); None otherwise.
    tags: TagSnapshot | None = None

    @property
    def complete(self) -> bool:
        return not self.problems

    def add_problem(self, scope: str, errcode: int | None, message: str) -> None:
        self.problems.append(FetchProblem(scope, errcode, message))


@dataclass(slots=True)
class TagSnapshot:
    """The tags the app can see: every tag of tag/list, with details for those whose tag/get answered.

    Tag problems are kept apart from the directory's: a tag that could not be read makes the run partial
    and stops tag removals, but never stops the removal of members who left.
    """

    listed: dict[int, str] = field(default_factory=dict)  # tag id -> name, from tag/list
    tags: dict[int, RemoteTag] = field(default_factory=dict)  # tag id -> details, from tag/get
    problems: list[FetchProblem] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems

    def add_problem(self, scope: str, errcode: int | None, message: str) -> None:
        self.problems.append(FetchProblem(scope, errcode, message))
