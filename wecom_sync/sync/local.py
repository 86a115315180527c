"""Read the local mirror (ORM rows) as the plain values the plan compares with the snapshot."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from django.db import connections, models

from ..conf import app_settings
from ..models import ExternalDepartment, ExternalMembership, ExternalUser, SyncSource
from .bulk import chunks
from .plan import (
    LocalDepartment,
    LocalState,
    LocalUser,
)


def load_local_departments(source: SyncSource) -> LocalState:
    """Read the source's departments (all of them: a few thousand at most) as plain values."""
    state = LocalState()
    rows = list(
        ExternalDepartment.objects.filter(source=source).values_list(
            "pk", "department_id", "parent_id", "remote_parent_id", "name", "name_en", "order", "leaders",
            "digest", "is_removed",
        )
    )
    pk_to_dept = {row[0]: row[1] for row in rows}
    for pk, dept_id, parent_pk, remote_parent, name, name_en, order, leaders, digest, removed in rows:
        state.departments[dept_id] = LocalDepartment(
            pk, dept_id, pk_to_dept.get(parent_pk), remote_parent, name, name_en, order,
            tuple(leaders or ()), digest, removed,
        )
    return state


def user_pk_converter() -> Callable[[Any], Any] | None:
    """How to turn a raw cursor value of ``ExternalUser.user_id`` into the user model's pk (None: as is).

    ``_stream`` skips Django's converters: a UUID primary key comes back as a string on SQLite, and would
    never equal the ``pk`` of a user loaded through the ORM.
    """
    target = ExternalUser._meta.get_field("user").target_field
    if isinstance(target, models.IntegerField | models.AutoField):
        return None
    return target.to_python


def _read_users(state: LocalState, users: Any) -> None:
    user_rows = users.values_list("pk", "userid", "userid_key", "digest", "status", "is_removed", "user_id")
    convert = user_pk_converter()
    for pk, userid, key, digest, status, removed, user_pk in _stream(user_rows):
        if userid == key:
            userid = key  # one string object instead of two equal ones
        if convert is not None and user_pk is not None:
            user_pk = convert(user_pk)
        state.users[key] = LocalUser(pk, userid, key, digest, status, bool(removed), user_pk)


def iter_local_users(source: SyncSource, departments: LocalState, size: int = 10000) -> Iterator[LocalState]:
    """Yield the source's users (with memberships) in chunks of ``size``, by primary key: two queries each."""
    pk_to_dept = {d.pk: d.department_id for d in departments.departments.values()}
    last = 0
    while True:
        chunk = LocalState()
        users = ExternalUser.objects.filter(source=source, pk__gt=last).order_by("pk")[:size]
        first_pk = last
        _read_users(chunk, users)
        if not chunk.users:
            return
        last = max(u.pk for u in chunk.users.values())
        memberships = ExternalMembership.objects.filter(
            user__source=source, user_id__gt=first_pk, user_id__lte=last
        )
        _read_memberships(chunk, memberships, pk_to_dept)
        yield chunk
        if len(chunk.users) < size:
            return


def _read_memberships(state: LocalState, memberships: Any, pk_to_dept: Mapping[int, int]) -> None:
    pk_to_key = {u.pk: u.key for u in state.users.values()}
    current_pk: Any = None
    items: list[tuple] = []
    for user_pk, dept_pk, order, leader, main in _stream(
        memberships.order_by("user_id").values_list("user_id", "department_id", "order", "is_leader", "is_main")
    ):
        if user_pk != current_pk:
            if items and current_pk in pk_to_key:
                state.memberships[pk_to_key[current_pk]] = tuple(sorted(items))
            current_pk, items = user_pk, []
        dept_id = pk_to_dept.get(dept_pk)
        if dept_id is not None:
            items.append((dept_id, order, bool(leader), bool(main)))
    if items and current_pk in pk_to_key:
        state.memberships[pk_to_key[current_pk]] = tuple(sorted(items))


def load_local_state(
    source: SyncSource, *, user_keys: Iterable[str] | None = None, with_memberships: bool = True
) -> LocalState:
    """Read the source's local rows as plain values (all departments; all users or only ``user_keys``)."""
    state = load_local_departments(source)
    pk_to_dept = {d.pk: d.department_id for d in state.departments.values()}
    users = ExternalUser.objects.filter(source=source)
    if user_keys is not None:
        user_keys = list(user_keys)
        if not user_keys:
            return state
        users = users.filter(userid_key__in=user_keys)
    _read_users(state, users.order_by())
    if with_memberships and state.users:
        memberships = ExternalMembership.objects.filter(user__source=source)
        if user_keys is not None:
            memberships = memberships.filter(user_id__in=[u.pk for u in state.users.values()])
        _read_memberships(state, memberships, pk_to_dept)
    return state


def _stream(queryset: Any, size: int = 10000) -> Iterator[tuple]:
    """Yield the rows of a values_list queryset straight from the cursor, in chunks.

    Skips Django's per-value converters, which dominate reading 100k small rows; callers cast booleans.
    """
    sql, params = queryset.query.sql_with_params()
    connection = connections[queryset.db]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        while True:
            chunk = cursor.fetchmany(size)
            if not chunk:
                return
            yield from chunk


def load_contacts(source: SyncSource, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Return the name and contact fields of the given local users (for rename detection)."""
    out: dict[str, dict[str, Any]] = {}
    size = app_settings.BATCH_SIZE
    for batch in chunks(list(keys), size):
        for key, raw in ExternalUser.objects.filter(source=source, userid_key__in=batch).values_list(
            "userid_key", "raw"
        ):
            raw = raw or {}
            out[key] = {k: raw.get(k) for k in ("name", "biz_mail", "email", "mobile")}
    return out


