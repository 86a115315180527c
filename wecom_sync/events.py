"""Processing the callback inbox: one event (and the pending events it coalesces), retries, requeueing.

An event means "this object changed"; its payload is not trusted for content (since 2022-08-15 it carries
ids only). Processing re-fetches the current state with ``user/get`` / ``department/get`` and applies it
through the full sync's apply code, so the order in which events arrive cannot roll an object back: a
late, older event re-applies the current state. A delete is confirmed the same way (the re-fetch must say
the object is gone), so a stale delete_user cannot remove a member who exists again.

An event ends where the next full sync would: members and departments outside the source's subtree
(``root_department_id``) are treated as the full sync treats them (not mirrored, or removed when they move
out; a department that moves in brings its sub-departments and members), a userid rename keeps the Django
account even when WeCom delivers a chain of renames in reverse, and references to a renamed userid
(departments' leaders, members' direct_leader) follow it.

Events of one source are processed one at a time (the source row is locked for the duration), which
serialises concurrent workers without a lock per object. Pending events about the same object are
handled together: one re-fetch, all marked applied with the same SyncRun.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from .callbacks import DEPARTMENT_CHANGE_TYPES, TAG_CHANGE_TYPES, USER_CHANGE_TYPES
from .conf import app_settings
from .exceptions import WeComAPIError
from .models import (
    CallbackEvent,
    ExternalDepartment,
    ExternalMembership,
    ExternalUser,
    SyncRun,
    SyncRunChange,
    SyncSource,
)
from .sync.snapshot import RemoteDepartment, RemoteUser, normalize_userid, payload_digest

logger = logging.getLogger("wecom_sync.events")
# Enqueueing happens on the callback's path: its failure is reported with the callback's keys.
callback_logger = logging.getLogger("wecom_sync.callback")

#: user/get errcodes meaning "this member does not exist (any more)".
USER_GONE_ERRCODES = frozenset({60111, 40003})
#: department/get errcodes meaning "this department does not exist (any more)".
DEPARTMENT_GONE_ERRCODES = frozenset({60123, 60003})
#: While a full sync holds the source's lock, events wait this long before they are tried again.
DEFER_SECONDS = 30
RETRY_BASE_SECONDS = 60
RETRY_MAX_SECONDS = 3600
REQUEUE_BATCH = 500

_SECRET_PARAM_RE = re.compile(r"(access_token|corpsecret|secret|token)=[^&\s'\"]+", re.IGNORECASE)

Status = CallbackEvent.Status


def safe_error(exc: BaseException) -> str:
    """Return a short description of an error with any secret-looking query parameter masked."""
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, WeComAPIError) else str(exc)
    return _SECRET_PARAM_RE.sub(r"\1=***", text)[:2000]


# -- scheduling -----------------------------------------------------------------------------------------


def enqueue_event(event_id: int) -> bool:
    """Send an event to the process_callback_event task; log and return False if the broker is down.

    A failed send loses nothing: the event stays pending and requeue_pending_events sends it again.
    """
    from .tasks import process_callback_event  # tasks sit on top of this module

    if app_settings.RUN_TASKS_IN_PROCESS:  # no broker: process it here, after the request's commit
        process_callback_event.apply((event_id,))
        return True
    try:
        process_callback_event.apply_async(
            (event_id,),
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
        )
    except Exception as exc:  # noqa: BLE001 - any broker failure must not fail the callback
        callback_logger.warning(
            "wecom_sync.callback.enqueue_failed",
            extra={"event_id": event_id, "error": type(exc).__name__},
        )
        return False
    return True


def _enqueue_after_commit(event_ids: Iterable[int]) -> None:
    for event_id in event_ids:
        transaction.on_commit(partial(enqueue_event, event_id))


def reprocess_events(queryset_or_ids: QuerySet[CallbackEvent] | Iterable[int]) -> int:
    """Reset events to pending (attempts and error cleared) and enqueue them; return how many."""
    if isinstance(queryset_or_ids, QuerySet):
        ids = list(queryset_or_ids.values_list("pk", flat=True))
    else:
        ids = [int(pk) for pk in queryset_or_ids]
    with transaction.atomic():
        count = CallbackEvent.objects.filter(pk__in=ids).update(
            status=Status.PENDING, attempts=0, last_error="", next_attempt_at=None, processed_at=None
        )
        _enqueue_after_commit(sorted(ids))
    logger.info("wecom_sync.events.reprocess", extra={"count": count})
    return count


def requeue_pending_events(*, now: Any = None, limit: int = REQUEUE_BATCH) -> int:
    """Enqueue pending events that were never sent (older than EVENT_REQUEUE_AFTER_SECONDS) or are due a retry.

    Each requeued event is leased for EVENT_REQUEUE_AFTER_SECONDS, so a slow queue is not flooded with
    copies (processing is idempotent anyway).
    """
    now = now or timezone.now()
    after = timedelta(seconds=app_settings.EVENT_REQUEUE_AFTER_SECONDS)
    due = Q(next_attempt_at__isnull=True, received_at__lte=now - after) | Q(next_attempt_at__lte=now)
    with transaction.atomic():
        ids = list(
            CallbackEvent.objects.filter(due, status=Status.PENDING, source__enabled=True)
            .order_by("received_at", "pk")
            .values_list("pk", flat=True)[:limit]
        )
        CallbackEvent.objects.filter(pk__in=ids).update(next_attempt_at=now + after)
        _enqueue_after_commit(ids)
    if ids:
        logger.info("wecom_sync.events.requeued", extra={"count": len(ids)})
    return len(ids)


# -- processing -----------------------------------------------------------------------------------------


def object_kind(event: CallbackEvent) -> str:
    """Return "user", "department", or "" for an event that is not processed (ignored)."""
    if event.event != "change_contact" or not event.object_id:
        return ""
    if event.change_type in USER_CHANGE_TYPES:
        return "user"
    if event.change_type in DEPARTMENT_CHANGE_TYPES and event.object_id.isdigit():
        return "department"
    if event.change_type in TAG_CHANGE_TYPES and event.object_id.isdigit() and app_settings.SYNC_TAGS:
        return "tag"
    return ""


def _new_userid(event: CallbackEvent) -> str:
    value = (event.payload or {}).get("NewUserID", "")
    return value.strip() if isinstance(value, str) else ""


def _userid(event: CallbackEvent) -> str:
    value = (event.payload or {}).get("UserID", "")
    return value.strip() if isinstance(value, str) else event.object_id


@dataclass
class _Outcome:
    counters: dict[str, int] = field(default_factory=dict)

    def add(self, result: dict[str, int] | None) -> None:
        for key, value in (result or {}).items():
            if isinstance(value, int):
                self.counters[key] = self.counters.get(key, 0) + value


def _user_group(source: SyncSource, event: CallbackEvent) -> list[CallbackEvent]:
    """Pending user events about the same member, following userid renames in both directions."""
    pending = CallbackEvent.objects.filter(
        source=source, status=Status.PENDING, event="change_contact", change_type__in=USER_CHANGE_TYPES
    )
    renames = [
        (e.object_id, normalize_userid(_new_userid(e)))
        for e in pending.filter(change_type="update_user", payload__has_key="NewUserID")
        if _new_userid(e)
    ]
    keys = {event.object_id}
    changed = True
    while changed:
        changed = False
        for old, new in renames:
            if (old in keys) != (new in keys):
                keys.update((old, new))
                changed = True
    return list(pending.filter(object_id__in=keys).order_by("create_time", "pk"))


def _department_group(source: SyncSource, event: CallbackEvent, kind: str = "department") -> list[CallbackEvent]:
    """Pending events about the same department (or, for kind "tag", the same tag)."""
    return list(
        CallbackEvent.objects.filter(
            source=source,
            status=Status.PENDING,
            event="change_contact",
            change_type__in=TAG_CHANGE_TYPES if kind == "tag" else DEPARTMENT_CHANGE_TYPES,
            object_id=event.object_id,
        ).order_by("create_time", "pk")
    )


#: At most this many unknown departments are fetched for one event group (a guard against a runaway chain).
MISSING_DEPARTMENTS_LIMIT = 200


class _Scope:
    """The departments a source syncs: the subtree of its ``root_department_id``, read as the full sync reads it.

    An event must end where the next full sync would, and that sync sees only this subtree: a member with
    no department in it is not a member of this source, and a department outside it is not mirrored. The
    subtree is read once per event group (``department/simplelist``, with the credential the full sync
    enumerates with); a source that syncs the whole directory (root 1) needs no call.
    """

    def __init__(self, source: SyncSource, client: Any) -> None:
        self.source = source
        self.root = int(source.root_department_id or 1)
        self.client = client
        self._parents: dict[int, int] | None = None

    @property
    def whole_directory(self) -> bool:
        return self.root == 1

    def parents(self) -> dict[int, int]:
        """{department id: parent id} of every department in the subtree (read on first use)."""
        if self._parents is None:
            from .client import WeComClient

            client = self.client
            if str(self.source.effective_fetch_strategy) == "contact_sync" and self.source.contact_sync_secret:
                client = WeComClient.from_source(self.source, credential="contact_sync")
            self._parents = {
                int(item["id"]): int(item.get("parentid") or 0) for item in client.simplelist_departments(self.root)
            }
        return self._parents

    def has_department(self, department_id: int | None) -> bool:
        """Whether the full sync would mirror this (existing) department."""
        if department_id is None:
            return False
        return self.whole_directory or int(department_id) in self.parents()

    def has_user(self, remote: RemoteUser) -> bool:
        """Whether the full sync would list this member (they belong to a department of the subtree)."""
        return self.whole_directory or any(d in self.parents() for d in remote.departments)

    def descendants(self, department_id: int) -> list[int]:
        """The department and those of the subtree below it, parents first."""
        if self.whole_directory:
            return [department_id]
        children: dict[int, list[int]] = {}
        for dept_id, parent in self.parents().items():
            children.setdefault(parent, []).append(dept_id)
        out, queue = [], [department_id]
        while queue:
            current = queue.pop(0)
            if current in out:
                continue
            out.append(current)
            queue.extend(sorted(children.get(current, ())))
        return out


def _missing_departments(
    source: SyncSource, client: Any, wanted: Iterable[int | None], scope: _Scope | None = None
) -> list[RemoteDepartment]:
    """Fetch the departments in ``wanted`` that are not mirrored yet, and their missing ancestors.

    Events are coalesced and may be processed out of WeCom's order: a member's event can be handled before
    the create_party of a department the member is now in (or a department's before its parent's). Without
    this, the membership (or the parent link) would be dropped until the next full sync. Only departments
    in the source's scope are returned (with the whole directory: those whose chain of parents reaches a
    mirrored department or the root).
    """
    root = int(source.root_department_id or 1)
    known = set(
        ExternalDepartment.objects.filter(source=source, is_removed=False).values_list("department_id", flat=True)
    )
    fetched: dict[int, RemoteDepartment] = {}
    queue = [int(d) for d in wanted if d and int(d) not in known and (scope is None or scope.has_department(d))]
    while queue and len(fetched) < MISSING_DEPARTMENTS_LIMIT:
        dept_id = queue.pop()
        if dept_id in known or dept_id in fetched:
            continue
        try:
            remote = RemoteDepartment.from_api(client.get_department(dept_id))
        except WeComAPIError as exc:
            if exc.errcode not in DEPARTMENT_GONE_ERRCODES and exc.errcode != 60011:
                raise
            continue  # gone, or outside what the app may see: nothing to mirror
        fetched[dept_id] = remote
        if remote.id != root and remote.parent_id and remote.parent_id not in known:
            queue.append(int(remote.parent_id))
    if scope is not None and not scope.whole_directory:
        return [remote for dept_id, remote in fetched.items() if scope.has_department(dept_id)]
    in_scope = set(known)
    changed = True
    while changed:
        changed = False
        for dept_id, remote in fetched.items():
            if dept_id not in in_scope and (dept_id == root or remote.parent_id in in_scope):
                in_scope.add(dept_id)
                changed = True
    return [remote for dept_id, remote in fetched.items() if dept_id in in_scope]


def _take_over_userid(source: SyncSource, run: SyncRun, client: Any, old: str, new: str) -> bool:
    """Rename ``old`` to ``new`` when ``new`` is already mirrored; return whether it did.

    That happens when a full sync's fetch straddled the rename (it saw both userids and mirrored the new
    one as a member of its own, with a new Django account), or when a departed member once had the new
    userid. WeCom says the person of ``old`` now answers to ``new``: once it confirms that ``old`` is gone,
    the old mirror (and so its Django account: identity survives a rename) takes the userid, and the other
    mirror is retired (its account handled by the removal policy, as for any member who left).
    """
    from .sync.objects import remove_users, rename_user

    old_key, new_key = normalize_userid(old), normalize_userid(new)
    mirrors = {e.userid_key: e for e in ExternalUser.objects.filter(source=source, userid_key__in=[old_key, new_key])}
    if old_key == new_key or old_key not in mirrors or new_key not in mirrors:
        return False
    try:
        client.get_user(old)
    except WeComAPIError as exc:
        if exc.errcode not in USER_GONE_ERRCODES:
            raise
    else:
        return False  # both userids exist in WeCom: two members, not a rename to merge
    taken = mirrors[new_key]
    if taken.user_id != mirrors[old_key].user_id:
        remove_users(source, run, [taken.userid])
    taken.delete()
    logger.info("wecom_sync.events.userid_taken_over", extra={"run_id": run.pk, "retired_mirror": taken.pk})
    return rename_user(source, run, old, new)


def _applied_rename_chain(source: SyncSource, userid: str, since: int) -> str:
    """Follow renames of ``userid`` already applied, made at or after ``since``; return the last userid.

    WeCom may deliver a rename chain in reverse (B->C before A->B): B->C was applied when B was unknown
    here. When A->B arrives, the member it names answers to C now.
    """
    current, seen = userid, set()
    while normalize_userid(current) not in seen:
        seen.add(normalize_userid(current))
        later = (
            CallbackEvent.objects.filter(
                source=source, status=Status.APPLIED, event="change_contact", change_type="update_user",
                object_id=normalize_userid(current), create_time__gte=since, payload__has_key="NewUserID",
            )
            .order_by("create_time", "pk")
            .first()
        )
        if later is None or not _new_userid(later):
            break
        current, since = _new_userid(later), later.create_time
    return current


def _rename_references(source: SyncSource, old: str, new: str) -> None:
    """Point departments' leaders and members' direct_leader at the new userid, as WeCom itself does.

    WeCom sends no event for the departments and members whose references a rename changed; the raw
    payloads and digests are updated with them, so the next full sync finds them unchanged.
    """
    old_key = normalize_userid(old)

    def swap(values: Any) -> list[Any] | None:
        if not isinstance(values, list) or not any(
            isinstance(v, str) and normalize_userid(v) == old_key for v in values
        ):
            return None
        return [new if isinstance(v, str) and normalize_userid(v) == old_key else v for v in values]

    departments = []
    led = ExternalDepartment.objects.filter(source=source, leaders__icontains=old_key)
    for dept in led.only("pk", "leaders", "raw", "digest"):
        leaders = swap(dept.leaders)
        if leaders is None:
            continue
        dept.leaders = leaders
        raw = dict(dept.raw or {})
        if swap(raw.get("department_leader")) is not None:
            raw["department_leader"] = swap(raw.get("department_leader"))
            dept.raw, dept.digest = raw, payload_digest(raw)
        departments.append(dept)
    if departments:
        ExternalDepartment.objects.bulk_update(departments, ["leaders", "raw", "digest"])
    members = []
    candidates = ExternalUser.objects.filter(source=source, raw__direct_leader__icontains=old_key)
    for ext in candidates.only("pk", "raw", "digest"):
        leaders = swap((ext.raw or {}).get("direct_leader"))
        if leaders is None:
            continue
        ext.raw = {**ext.raw, "direct_leader": leaders}
        ext.digest = payload_digest(ext.raw)
        members.append(ext)
    if members:
        ExternalUser.objects.bulk_update(members, ["raw", "digest"])


def _contacts(name: str, values: Iterable[Any]) -> set[tuple[str, str]]:
    name = name.strip()
    return {(name, str(v).strip().lower()) for v in values if name and isinstance(v, str) and v.strip()}


def _earlier_userid(source: SyncSource, client: Any, userid: str) -> str | None:
    """The mirrored userid that WeCom's member ``userid`` had before a rename not yet received, if certain.

    As the full sync's rename detection: a mirrored member whose userid is gone from WeCom, with the same
    name and a shared non-empty biz_mail, email or mobile, and the only one to match.
    """
    try:
        remote = RemoteUser.from_api(client.get_user(userid))
    except WeComAPIError as exc:
        if exc.errcode not in USER_GONE_ERRCODES:
            raise
        return None
    wanted = _contacts(remote.name, (remote.biz_mail, remote.email, remote.mobile))
    if not wanted:
        return None
    matches = [
        candidate
        for candidate, raw in ExternalUser.objects.filter(
            source=source, is_removed=False, name=remote.name[:255]
        ).values_list("userid", "raw")
        if wanted & _contacts(str((raw or {}).get("name") or ""),
                              [(raw or {}).get(k) for k in ("biz_mail", "email", "mobile")])
    ]
    if len(matches) != 1:
        return None
    try:
        client.get_user(matches[0])
    except WeComAPIError as exc:
        if exc.errcode not in USER_GONE_ERRCODES:
            raise
        return matches[0]
    return None  # still in WeCom under that userid: another person


def _rename(source: SyncSource, run: SyncRun, client: Any, old: str, new: str, since: int,
            outcome: _Outcome) -> bool:
    """Apply one rename event (identity is the userid and survives renames); return whether it did."""
    from .sync.objects import rename_user

    final = new
    mirrored = set(
        ExternalUser.objects.filter(
            source=source, userid_key__in=[normalize_userid(old), normalize_userid(new)]
        ).values_list("userid_key", flat=True)
    )
    if not mirrored:
        # Neither userid is known here: an earlier rename of this member (A->B before this B->C) has not
        # arrived yet. The member is recognised as the full sync recognises a rename, not made anew.
        earlier = _earlier_userid(source, client, new)
        if earlier is not None and rename_user(source, run, earlier, new, counters=outcome.counters):
            _rename_references(source, earlier, new)
            return True
    if normalize_userid(new) not in mirrored:
        final = _applied_rename_chain(source, new, since)
    if normalize_userid(final) != normalize_userid(new) and _take_over_userid(source, run, client, old, final):
        renamed = True
    else:
        renamed = _take_over_userid(source, run, client, old, new) or rename_user(
            source, run, old, new, counters=outcome.counters
        )
        final = new
    if renamed:
        _rename_references(source, old, final)
    return renamed


def _apply_users(source: SyncSource, run: SyncRun, group: list[CallbackEvent], outcome: _Outcome) -> None:
    from .client import WeComClient

    renames = sorted(
        ((e.create_time, e.pk, _userid(e), _new_userid(e)) for e in group if _new_userid(e)),
        key=lambda r: (r[0], r[1]),
    )
    client = WeComClient.from_source(source)
    unrenamed: list[str] = []
    for ct, _pk, old, new in renames:
        renamed = _rename(source, run, client, old, new, ct, outcome)
        outcome.add({"renamed": 1 if renamed else 0})
        if not renamed:
            unrenamed.append(old)

    def final_userid(userid: str, since: int) -> str:
        # Follow the renames made at or after `since`: the member now answers to the last new userid.
        current = userid
        for ct, _pk, old, new in renames:
            if ct >= since and normalize_userid(old) == normalize_userid(current):
                current = new
        return current

    targets: dict[str, str] = {}
    for e in group:
        userid = final_userid(_new_userid(e) or _userid(e), e.create_time)
        # A rename made after this event may have been applied already (events arrive in any order): the
        # member answers to the renamed userid now, and the old one would read as gone.
        userid = _applied_rename_chain(source, userid, e.create_time)
        targets.setdefault(normalize_userid(userid), userid)

    # A rename that could not be applied (a full sync running at that moment already mirrored the new
    # userid) leaves the old mirror behind: re-fetch the old userid too, so that it is removed once WeCom
    # confirms it is gone, instead of staying active until the next full sync.
    leftover = ExternalUser.objects.filter(
        source=source, userid_key__in=[normalize_userid(u) for u in unrenamed], is_removed=False
    ).values_list("userid", flat=True)
    for userid in leftover:
        targets.setdefault(normalize_userid(userid), userid)
    _refresh_users(source, run, client, _Scope(source, client), list(targets.values()), outcome)


def _refresh_users(source: SyncSource, run: SyncRun, client: Any, scope: _Scope, userids: list[str],
                   outcome: _Outcome) -> None:
    """Re-fetch these members and apply them as the full sync would: gone or out of scope means removed."""
    from .sync.objects import apply_remote_objects, remove_users

    found: list[RemoteUser] = []
    gone: list[str] = []
    for userid in userids:
        try:
            remote = RemoteUser.from_api(client.get_user(userid))
        except WeComAPIError as exc:
            if exc.errcode not in USER_GONE_ERRCODES:
                raise
            gone.append(userid)
            continue
        if scope.has_user(remote):
            found.append(remote)
        else:
            gone.append(userid)  # in WeCom, but not in the synced subtree: the full sync would not list them
    led = _led_departments(source, found, gone)
    if found:
        departments = _missing_departments(source, client, {d for user in found for d in user.departments}, scope)
        outcome.add(apply_remote_objects(source, run, departments=departments, users=found))
        if not scope.whole_directory:
            # A department mirrored only now may have moved into the subtree with members of its own.
            for dept in departments:
                _enter_scope(source, run, client, scope, dept.id, outcome)
    if gone:
        outcome.add(remove_users(source, run, gone))
    if led:
        _refresh_departments(source, run, client, scope, led, outcome)


def _led_departments(source: SyncSource, found: list[RemoteUser], gone: list[str]) -> list[int]:
    """Mirrored departments whose leader list these members' change may have changed.

    WeCom updates a department's leaders when a leader leaves it, joins it as leader or leaves the company,
    and sends no department event for that (update_party fires only when ParentId changes).
    """
    keys = {u.key for u in found} | {normalize_userid(u) for u in gone}
    leading = {(u.key, d) for u in found for d, _o, leader, _m in u.memberships() if leader}
    if not keys:
        return []
    named = Q(department_id__in={d for _k, d in leading})
    for key in keys:
        named |= Q(leaders__icontains=key)  # narrowed here, decided exactly below
    out = []
    for dept_id, leaders in ExternalDepartment.objects.filter(named, source=source, is_removed=False).values_list(
        "department_id", "leaders"
    ):
        local = {normalize_userid(str(v)) for v in leaders or ()}
        if local & keys or any((key, dept_id) in leading for key in keys - local):
            out.append(dept_id)
    return out


def _refresh_departments(source: SyncSource, run: SyncRun, client: Any, scope: _Scope, department_ids: list[int],
                         outcome: _Outcome) -> None:
    """Re-fetch mirrored departments and apply what changed (a gone one is left to its own event)."""
    from .sync.objects import apply_remote_objects

    departments = []
    for dept_id in department_ids:
        if not scope.has_department(dept_id):
            continue
        try:
            departments.append(RemoteDepartment.from_api(client.get_department(dept_id)))
        except WeComAPIError as exc:
            if exc.errcode not in DEPARTMENT_GONE_ERRCODES:
                raise
    if departments:
        outcome.add(apply_remote_objects(source, run, departments=departments))


def _apply_departments(
    source: SyncSource, run: SyncRun, group: list[CallbackEvent], outcome: _Outcome
) -> None:
    from .client import WeComClient
    from .sync.objects import apply_remote_objects, remove_departments

    department_id = int(group[0].object_id)
    client = WeComClient.from_source(source)
    scope = _Scope(source, client)
    if not scope.has_department(department_id):
        # Outside the synced subtree (or gone): no department/get, which an app whose visible range is
        # that subtree would answer with 60011.
        _leave_scope(source, run, client, scope, department_id, outcome)
        return
    try:
        remote = RemoteDepartment.from_api(client.get_department(department_id))
    except WeComAPIError as exc:
        if exc.errcode not in DEPARTMENT_GONE_ERRCODES:
            raise
        outcome.add(remove_departments(source, run, [department_id]))
        return
    was_mirrored = ExternalDepartment.objects.filter(
        source=source, department_id=remote.id, is_removed=False
    ).exists()
    parents = _missing_departments(source, client, [remote.parent_id], scope) if remote.id != scope.root else []
    outcome.add(apply_remote_objects(source, run, departments=[*parents, remote]))
    if not scope.whole_directory:
        for dept_id in [*(p.id for p in parents), *([] if was_mirrored else [remote.id])]:
            _enter_scope(source, run, client, scope, dept_id, outcome)


def _leave_scope(source: SyncSource, run: SyncRun, client: Any, scope: _Scope, department_id: int,
                 outcome: _Outcome) -> None:
    """A department moved out of the synced subtree: remove it and what the full sync no longer sees below it.

    Its mirrored sub-departments outside the subtree go with it; their members are re-fetched, so that a
    member left with no department in the subtree is removed as the full sync would remove them.
    """
    from .sync.objects import remove_departments

    rows = list(
        ExternalDepartment.objects.filter(source=source, is_removed=False).values_list(
            "pk", "department_id", "parent_id"
        )
    )
    dept_of = {pk: dept_id for pk, dept_id, _parent in rows}
    children: dict[int, list[int]] = {}
    for _pk, dept_id, parent_pk in rows:
        if parent_pk in dept_of:
            children.setdefault(dept_of[parent_pk], []).append(dept_id)
    if department_id not in dept_of.values():
        return
    leaving, queue = set(), [department_id]
    while queue:
        current = queue.pop()
        if current in leaving:
            continue
        leaving.add(current)
        queue.extend(d for d in children.get(current, ()) if not scope.has_department(d))
    members = list(
        ExternalMembership.objects.filter(department__source=source, department__department_id__in=leaving)
        .values_list("user__userid", flat=True)
        .distinct()
    )
    outcome.add(remove_departments(source, run, sorted(leaving)))
    if members:
        _refresh_users(source, run, client, scope, sorted(set(members)), outcome)


def _enter_scope(source: SyncSource, run: SyncRun, client: Any, scope: _Scope, department_id: int,
                 outcome: _Outcome) -> None:
    """A department came into the synced subtree (it was not mirrored): bring in its subtree and members.

    WeCom sends one event for the department that moved, and it may be processed after an event that
    already mirrored the department; the full sync would also see the departments below it and their
    members, which get no event of their own.
    """
    from .sync.objects import apply_remote_objects

    below = [d for d in scope.descendants(department_id) if d != department_id]
    mirrored = set(
        ExternalDepartment.objects.filter(source=source, is_removed=False, department_id__in=below).values_list(
            "department_id", flat=True
        )
    )
    departments = []
    for dept_id in below:
        if dept_id in mirrored:
            continue
        try:
            departments.append(RemoteDepartment.from_api(client.get_department(dept_id)))
        except WeComAPIError as exc:
            if exc.errcode not in DEPARTMENT_GONE_ERRCODES:
                raise
    if departments:
        outcome.add(apply_remote_objects(source, run, departments=departments))
    members: dict[str, RemoteUser] = {}
    for dept_id in [department_id, *below]:
        try:
            listed = client.list_users(dept_id)
        except WeComAPIError as exc:
            if exc.errcode not in DEPARTMENT_GONE_ERRCODES:
                raise
            continue
        for item in listed:
            remote = RemoteUser.from_api(item)
            members.setdefault(remote.key, remote)
    if members:
        outcome.add(apply_remote_objects(source, run, users=list(members.values())))


#: A rename whose old userid is unknown here waits this long for the rename before it (B->C before A->B).
RENAME_WAIT_SECONDS = 30


def _earlier_rename_awaited(source: SyncSource, group: list[CallbackEvent]) -> Any:
    """When the group should wait for an earlier rename of its member, until when; else None.

    WeCom may deliver a member's renames in reverse (B->C before A->B). Neither B nor C is mirrored then,
    and applying B->C alone would give C a new account. Waiting a little lets A->B arrive: the two are then
    coalesced and applied in order. A rename that is still unexplained after the wait is applied as it is
    (the member is recognised as the full sync would; a late A->B still merges C back into A's account).
    """
    renames = [(e, normalize_userid(_userid(e)), normalize_userid(_new_userid(e))) for e in group if _new_userid(e)]
    if not renames:
        return None
    keys = {k for _e, old, new in renames for k in (old, new)}
    mirrored = set(
        ExternalUser.objects.filter(source=source, userid_key__in=keys).values_list("userid_key", flat=True)
    )
    explained = mirrored | {new for _e, _old, new in renames} | {
        e.object_id for e in group if e.change_type == "create_user"
    }
    now = timezone.now()
    waits = [
        e.received_at + timedelta(seconds=RENAME_WAIT_SECONDS)
        for e, old, new in renames
        if old not in explained
        and new not in mirrored
        # the later rename (B->C) was applied already: this is the late A->B, it has nothing to wait for
        and normalize_userid(_applied_rename_chain(source, new, e.create_time)) == new
    ]
    until = max(waits, default=None)
    return until if until is not None and until > now else None


def _full_sync_holds_lock(source: SyncSource) -> bool:
    """Tell whether a live full sync holds the source's lock (its snapshot may predate this event)."""
    from .sync.lock import is_stale

    if source.lock_run_id is None:
        return False
    holder = SyncRun.objects.filter(pk=source.lock_run_id).first()
    return (
        holder is not None
        and holder.kind != SyncRun.Kind.EVENTS
        and holder.status == SyncRun.Status.RUNNING
        and not is_stale(holder)
    )


def _finish_without_run(event: CallbackEvent, status: str, reason: str) -> str:
    event.status = status
    event.processed_at = timezone.now()
    event.last_error = reason
    event.next_attempt_at = None
    event.save(update_fields=["status", "processed_at", "last_error", "next_attempt_at"])
    logger.info(
        "wecom_sync.events.%s", status,
        extra={"event_id": event.pk, "change_type": event.change_type, "reason": reason},
    )
    return status


def _process_locked(event_id: int) -> str | None:
    """Process one event inside a transaction that holds the source's row lock."""
    event = CallbackEvent.objects.filter(pk=event_id).only("source_id").first()
    if event is None:
        return None
    source = SyncSource.objects.select_for_update().get(pk=event.source_id)
    event = CallbackEvent.objects.get(pk=event_id)  # re-read under the lock
    if event.status != Status.PENDING:
        return event.status
    if not source.enabled:
        return _finish_without_run(event, Status.IGNORED, _("The source is disabled."))
    kind = object_kind(event)
    if not kind:
        return _finish_without_run(event, Status.IGNORED, "")
    if _full_sync_holds_lock(source):
        event.next_attempt_at = timezone.now() + timedelta(seconds=DEFER_SECONDS)
        event.save(update_fields=["next_attempt_at"])
        logger.info("wecom_sync.events.deferred", extra={"event_id": event.pk, "reason": "full_sync_running"})
        return event.status

    group = _user_group(source, event) if kind == "user" else _department_group(source, event, kind)
    if event.pk not in {e.pk for e in group}:
        group.append(event)
    waits_until = _earlier_rename_awaited(source, group) if kind == "user" else None
    if waits_until is not None:
        event.next_attempt_at = waits_until
        event.save(update_fields=["next_attempt_at"])
        logger.info("wecom_sync.events.deferred", extra={"event_id": event.pk, "reason": "rename_order"})
        return event.status

    now = timezone.now()
    run = SyncRun.objects.create(
        source=source,
        kind=SyncRun.Kind.EVENTS,
        trigger=SyncRun.Trigger.CALLBACK,
        status=SyncRun.Status.RUNNING,
        started_at=now,
        heartbeat_at=now,
    )
    outcome = _Outcome()
    from .sync.tags import apply_tag_event, refresh_after_events

    if kind == "user":
        _apply_users(source, run, group, outcome)
    elif kind == "tag":
        outcome.add(apply_tag_event(source, run, int(event.object_id)))
    else:
        _apply_departments(source, run, group, outcome)
    if kind != "tag":
        outcome.add(refresh_after_events(source, run, kind, group))  # tags listing these objects

    SyncRunChange.objects.bulk_create(
        SyncRunChange(
            run=run,
            object_type=SyncRunChange.ObjectType.EVENT,
            external_id=str(e.pk),
            display_name=f"{e.change_type} {e.object_id}"[:255],
            action=SyncRunChange.Action.SKIPPED,
            fields={"coalesced_into": event.pk},
        )
        for e in group
        if e.pk != event.pk
    )
    finished = timezone.now()
    outcome.counters["events"] = len(group)
    failed = sum(v for k, v in outcome.counters.items() if k.endswith("_failed"))
    run.status = SyncRun.Status.PARTIAL if failed else SyncRun.Status.SUCCEEDED
    run.finished_at = finished
    run.counters = outcome.counters
    run.save(update_fields=["status", "finished_at", "counters"])
    if failed:
        # The objects that could be applied are; the event is retried (and then kept failed) for the rest.
        # The events coalesced into it stay pending with it: a retry must see the whole group again (a
        # rename among them decides which userid is re-fetched), and applying twice is harmless.
        message = _("%(count)d object(s) could not be applied; see the run's failed changes.") % {"count": failed}
        status = _count_failed_attempt(event, run, str(message))
        others = [e.pk for e in group if e.pk != event.pk]
        CallbackEvent.objects.filter(pk__in=others, status=Status.PENDING).update(
            run=run, next_attempt_at=event.next_attempt_at
        )
        return status
    CallbackEvent.objects.filter(pk__in=[e.pk for e in group]).update(
        status=Status.APPLIED, run=run, processed_at=finished, last_error="", next_attempt_at=None
    )
    logger.info(
        "wecom_sync.events.applied",
        extra={"event_id": event.pk, "run_id": run.pk, "coalesced": len(group) - 1, "kind": kind},
    )
    return Status.APPLIED


def _count_failed_attempt(event: CallbackEvent, run: SyncRun, error: str) -> str:
    """Count one failed attempt: schedule a retry with backoff, or keep the event failed at the limit."""
    now = timezone.now()
    event.attempts += 1
    event.last_error = error
    event.run = run
    if event.attempts >= app_settings.EVENT_MAX_ATTEMPTS:
        event.status = Status.FAILED
        event.processed_at = now
        event.next_attempt_at = None
    else:
        delay = min(RETRY_BASE_SECONDS * 2 ** (event.attempts - 1), RETRY_MAX_SECONDS)
        event.next_attempt_at = now + timedelta(seconds=delay)
    event.save(update_fields=["attempts", "last_error", "run", "status", "processed_at", "next_attempt_at"])
    logger.warning(
        "wecom_sync.events.failed",
        extra={"event_id": event.pk, "attempts": event.attempts, "status": event.status, "run_id": run.pk},
    )
    return event.status


def _record_failure(event_id: int, exc: BaseException) -> str | None:
    """Record an attempt that raised (everything it did was rolled back) in a failed run, and count it."""
    error = safe_error(exc)
    with transaction.atomic():
        event = CallbackEvent.objects.select_for_update().filter(pk=event_id).first()
        if event is None:
            return None
        now = timezone.now()
        run = SyncRun.objects.create(
            source_id=event.source_id,
            kind=SyncRun.Kind.EVENTS,
            trigger=SyncRun.Trigger.CALLBACK,
            status=SyncRun.Status.FAILED,
            started_at=now,
            finished_at=now,
            message=error,
            counters={"events": 1, "event_failed": 1},
        )
        SyncRunChange.objects.create(
            run=run,
            object_type=SyncRunChange.ObjectType.EVENT,
            external_id=str(event.pk),
            display_name=f"{event.change_type} {event.object_id}"[:255],
            action=SyncRunChange.Action.FAILED,
            error=error,
        )
        return _count_failed_attempt(event, run, error)


def process_event(event_id: int) -> str | None:
    """Process one inbox event (and coalesce the pending events about the same object); return its status.

    Idempotent: an event that is no longer pending is left alone. A failure rolls back whatever the
    attempt changed, is recorded on the event and in a failed SyncRun, and is retried with backoff by
    requeue_pending_events until EVENT_MAX_ATTEMPTS, after which the event stays failed.
    """
    try:
        with transaction.atomic():
            return _process_locked(event_id)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded on the event, none is lost
        logger.debug("wecom_sync.events.error", exc_info=True)
        return _record_failure(event_id, exc)
