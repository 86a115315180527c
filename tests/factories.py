"""Factories for test rows (plain functions, no fixture files)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from wecom_sync.models import SyncSource
from wecom_sync.sync.snapshot import RemoteDepartment, RemoteUser, Snapshot

_seq = itertools.count(1)

APP_SECRET = "app-secret-Zx81Qk2mN7pLr4Tv9WbYc3"
CONTACT_SECRET = "contact-secret-Hq5Jd8Ke2Lf6Mg0Nz4"
TOKEN = "Tk7fG2hJ9kL4mN6pQ8rS1tU3vW5xY0zA"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def make_source(**overrides: Any) -> SyncSource:
    """Create and return a saved SyncSource with realistic, distinct values."""
    n = next(_seq)
    values: dict[str, Any] = {
        "name": f"Acme {n}",
        "slug": f"acme-{n}",
        "corp_id": f"ww{n:016x}",
        "agent_id": 1000002,
        "secret": APP_SECRET,
        "contact_sync_secret": CONTACT_SECRET,
        "token": TOKEN,
        "encoding_aes_key": AES_KEY,
    }
    values.update(overrides)
    return SyncSource.objects.create(**values)


def simulator_source(sim: Any, **overrides: Any) -> SyncSource:
    """Create and return a SyncSource pointed at a running ``WeComSimulator`` with its credentials."""
    values: dict[str, Any] = {
        "api_base_url": sim.base_url,
        "corp_id": sim.corp_id,
        "secret": sim.app_secret,
        "contact_sync_secret": sim.contact_sync_secret,
        "agent_id": sim.agent_id,
    }
    values.update(overrides)
    return make_source(**values)


def make_user(username: str, *codenames: str, **fields: Any) -> Any:
    """Create and return a Django user holding the given ``wecom_sync`` permissions (by codename)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(username, password="pw", **fields)
    perms = Permission.objects.filter(content_type__app_label="wecom_sync", codename__in=codenames)
    assert perms.count() == len(set(codenames)), f"unknown permission among {codenames}"
    user.user_permissions.set(perms)
    return user


def remote_department(
    id: int, parent: int = 1, *, name: str | None = None, order: int | None = None,  # noqa: A002
    leaders: Sequence[str] | None = None,
) -> RemoteDepartment:
    """A department as WeCom's department/list returns it (order defaults to the id)."""
    raw: dict[str, Any] = {"id": id, "name": name or f"Dept {id}", "parentid": parent,
                           "order": id if order is None else order}
    if leaders is not None:
        raw["department_leader"] = list(leaders)
    return RemoteDepartment.from_api(raw)


def remote_member(
    userid: str, departments: Sequence[int] = (1,), *, status: int = 1, name: str | None = None,
    main: int | None = None, orders: Sequence[int] | None = None, leaders: Sequence[int] | None = None,
    **extra: Any,
) -> RemoteUser:
    """A member as WeCom's user/list returns it, in ``departments`` (the first one main by default)."""
    return RemoteUser.from_api({
        "userid": userid, "name": name or f"{userid.title()} Person", "department": list(departments),
        "order": list(orders or [0] * len(departments)),
        "is_leader_in_dept": list(leaders or [0] * len(departments)),
        "main_department": main or departments[0], "status": status, **extra,
    })


def make_snapshot(
    departments: Iterable[RemoteDepartment], members: Iterable[RemoteUser], problems: Iterable[str] = (),
    root: int = 1,
) -> Snapshot:
    """A fetched directory of these departments and members; each scope in ``problems`` was unreadable."""
    snap = Snapshot(root_department_id=root)
    for d in departments:
        snap.departments[d.id] = d
    for u in members:
        snap.users[u.key] = u
    for scope in problems:
        snap.add_problem(scope, 60011, "no privilege")
    return snap
