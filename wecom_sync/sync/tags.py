"""WeCom tags (标签): mirrored as ``ExternalTag`` rows and, with ``MIRROR_TAGS``, as Django groups.

One module for the whole concern, called from three places:

- the full sync (``apply_tag_snapshot``), after users are applied: every tag the app can see is created or
  updated with its members and departments; tags are removed only when tag/list and every tag/get answered
  (rule 1), and a tag/get failure leaves the local tag as it was;
- ``update_tag`` / ``create_tag`` / ``delete_tag`` events (``apply_tag_event``): the tag is re-read with
  tag/get (the event's own lists are not trusted: its order relative to member events is not guaranteed);
- member and department events (``refresh_after_events``): links to members created after the tag was read
  are made from the tag's stored payload, and the mirrored groups follow membership changes.

A tag's group holds the tag's members plus every member of its departments **and their sub-departments**
(in WeCom a department in a tag stands for everyone under it). The sync creates the group itself, never takes
over an existing one, and remembers which Django users it put in (``ExternalTag.synced_members``): only those
leave the group when they leave the tag; members added by hand stay.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from ..callbacks import TAG_CHANGE_TYPES
from ..client import WeComClient
from ..conf import app_settings
from ..exceptions import WeComAPIError
from ..models import ExternalDepartment, ExternalMembership, ExternalTag, ExternalUser, SyncRun, SyncRunChange
from .bulk import CHANGE_COLUMNS, chunks, insert_rows
from .runlog import UNCHANGED, counter_key
from .snapshot import FetchProblem, RemoteTag, TagSnapshot, normalize_userid

logger = logging.getLogger(__name__)

#: tag/get errcode meaning "this tag does not exist (any more)".
TAG_GONE_ERRCODES = frozenset({40068})

Action = SyncRunChange.Action
_IN_CHUNK = 500  # ids per IN (...) query


@dataclass
class TagResult:
    """What a full sync did to tags: counters, and the parts of the tag fetch that failed."""

    counters: Counter[str] = field(default_factory=Counter)
    problems: list[FetchProblem] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems

    def message(self) -> str:
        """Return the run message for an incomplete tag fetch ("" when complete)."""
        if not self.problems:
            return ""
        shown = "; ".join(f"{p.scope}: {p.message}" for p in self.problems[:5])
        return _("%(count)d tag(s) could not be read, so those tags were left as they were and no tag was "
                 "removed: %(shown)s") % {"count": len(self.problems), "shown": shown}


def _user_links() -> Any:
    return ExternalTag.users.through


def _dept_links() -> Any:
    return ExternalTag.departments.through


def _tracked() -> Any:
    return ExternalTag.synced_members.through


def _tracked_user_column() -> str:
    return ExternalTag.synced_members.field.m2m_reverse_field_name()


class _TagWriter:
    """Writes remote tags into one source's ``ExternalTag`` rows, links and change log."""

    def __init__(self, source: Any, run: SyncRun, *, dry_run: bool = False) -> None:
        self.source = source
        self.run = run
        self.dry_run = dry_run
        self.counters: Counter[str] = Counter()
        self.changes: list[tuple] = []
        self.user_pk: dict[str, int] = {}
        self.dept_pk: dict[int, int] = {}
        self.touched: set[int] = set()  # tag pks whose links or state changed

    def load_targets(self, tags: Iterable[RemoteTag]) -> None:
        """Load the local ids of the members and departments these tags list (not removed ones)."""
        tags = list(tags)
        keys = sorted({normalize_userid(u) for t in tags for u in t.userids} - set(self.user_pk))
        for part in chunks(keys, _IN_CHUNK):
            self.user_pk.update(ExternalUser.objects.filter(
                source=self.source, is_removed=False, userid_key__in=part).values_list("userid_key", "pk"))
        ids = sorted({d for t in tags for d in t.department_ids} - set(self.dept_pk))
        for id_part in chunks(ids, _IN_CHUNK):
            self.dept_pk.update(ExternalDepartment.objects.filter(
                source=self.source, is_removed=False, department_id__in=id_part).values_list("department_id", "pk"))

    def change(self, tag_id: int, action: str, name: str, fields: dict[str, Any] | None = None,
               error: str = "") -> None:
        applied = not self.dry_run and action != Action.FAILED
        self.changes.append((self.run.pk, SyncRunChange.ObjectType.TAG, str(tag_id), name[:255], action,
                             dict(fields or {}), error, applied, timezone.now()))
        self.counters[counter_key(SyncRunChange.ObjectType.TAG, action)] += 1

    def flush(self) -> None:
        """Write the recorded changes."""
        insert_rows(SyncRunChange, CHANGE_COLUMNS, self.changes)
        self.changes = []

    @staticmethod
    def links(tag_pks: Sequence[int]) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
        """Return the current (member pks, department pks) of these tags, by tag pk."""
        users: dict[int, set[int]] = {pk: set() for pk in tag_pks}
        depts: dict[int, set[int]] = {pk: set() for pk in tag_pks}
        for part in chunks(list(tag_pks), _IN_CHUNK):
            for tag_pk, user_pk in _user_links().objects.filter(externaltag_id__in=part).values_list(
                    "externaltag_id", "externaluser_id"):
                users[tag_pk].add(user_pk)
            for tag_pk, dept_pk in _dept_links().objects.filter(externaltag_id__in=part).values_list(
                    "externaltag_id", "externaldepartment_id"):
                depts[tag_pk].add(dept_pk)
        return users, depts

    def apply(self, remote: RemoteTag, local: ExternalTag | None, current: tuple[set[int], set[int]]) -> None:
        """Create, update or reactivate one tag with its links (one transaction)."""
        users = {self.user_pk[k] for k in (normalize_userid(u) for u in remote.userids) if k in self.user_pk}
        depts = {self.dept_pk[d] for d in remote.department_ids if d in self.dept_pk}
        old_users, old_depts = current
        fields: dict[str, Any] = {}
        if local is None:
            action = Action.CREATED
            fields["name"] = [None, remote.name]
        else:
            action = Action.REACTIVATED if local.is_removed else Action.UPDATED
            if local.name != remote.name:
                fields["name"] = [local.name, remote.name]
        if users != old_users:
            fields["members"] = {"added": len(users - old_users), "removed": len(old_users - users)}
        if depts != old_depts:
            fields["departments"] = {"added": len(depts - old_depts), "removed": len(old_depts - depts)}
        if local is not None and not local.is_removed and not fields and local.digest == remote.digest:
            self.counters[counter_key(SyncRunChange.ObjectType.TAG, UNCHANGED)] += 1
            return
        if self.dry_run:
            self.change(remote.id, action, remote.name, fields)
            return
        now = timezone.now()
        with transaction.atomic():
            if local is None:
                local = ExternalTag.objects.create(source=self.source, tag_id=remote.id, name=remote.name[:255],
                                                   raw=dict(remote.raw), digest=remote.digest)
            else:
                local.name, local.raw, local.digest = remote.name[:255], dict(remote.raw), remote.digest
                local.is_removed, local.removed_at, local.updated_at = False, None, now
                local.save(update_fields=["name", "raw", "digest", "is_removed", "removed_at", "updated_at"])
            self._write_links(local.pk, users, old_users, depts, old_depts)
        self.change(remote.id, action, remote.name, fields)  # recorded once written (a failure is recorded instead)
        self.touched.add(local.pk)

    @staticmethod
    def _write_links(tag_pk: int, users: set[int], old_users: set[int], depts: set[int], old_depts: set[int]) -> None:
        if old_users - users:
            _user_links().objects.filter(externaltag_id=tag_pk, externaluser_id__in=old_users - users).delete()
        if users - old_users:
            _user_links().objects.bulk_create(
                [_user_links()(externaltag_id=tag_pk, externaluser_id=u) for u in sorted(users - old_users)],
                ignore_conflicts=True)
        if old_depts - depts:
            _dept_links().objects.filter(externaltag_id=tag_pk, externaldepartment_id__in=old_depts - depts).delete()
        if depts - old_depts:
            _dept_links().objects.bulk_create(
                [_dept_links()(externaltag_id=tag_pk, externaldepartment_id=d) for d in sorted(depts - old_depts)],
                ignore_conflicts=True)

    def remove(self, local: ExternalTag) -> None:
        """Mark a tag gone from WeCom as removed and drop its links."""
        if not self.dry_run:
            now = timezone.now()
            with transaction.atomic():
                ExternalTag.objects.filter(pk=local.pk).update(is_removed=True, removed_at=now, updated_at=now)
                _user_links().objects.filter(externaltag_id=local.pk).delete()
                _dept_links().objects.filter(externaltag_id=local.pk).delete()
            local.is_removed, local.removed_at = True, now
        self.change(local.tag_id, Action.REMOVED, local.name)
        if self.dry_run:
            return
        self.touched.add(local.pk)

    def guarded(self, tag_id: int, name: str, work: Any) -> None:
        """Run one tag's work; a failure becomes a failed change (rule 8), the rest goes on."""
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - one bad tag must not abort the run
            logger.warning("wecom_sync.tags.failed", extra={"run_id": self.run.pk, "tag_id": tag_id,
                                                             "error_type": type(exc).__name__})
            self.change(tag_id, Action.FAILED, name, error=f"{type(exc).__name__}: {exc}"[:2000])


# -- full sync -------------------------------------------------------------------------------------------


def apply_tag_snapshot(source: Any, run: SyncRun, tags: TagSnapshot | None, *, dry_run: bool = False) -> TagResult:
    """Mirror the fetched tags of ``source`` (no-op when tags were not fetched); return counters and problems."""
    result = TagResult()
    if tags is None:
        return result
    result.problems = list(tags.problems)
    writer = _TagWriter(source, run, dry_run=dry_run)
    local = {t.tag_id: t for t in ExternalTag.objects.filter(source=source)}
    writer.load_targets(tags.tags.values())
    current_users, current_depts = writer.links([t.pk for t in local.values()])
    for tag_id, remote in sorted(tags.tags.items()):
        row = local.get(tag_id)
        links = (current_users.get(row.pk, set()), current_depts.get(row.pk, set())) if row else (set(), set())
        writer.guarded(tag_id, remote.name,
                       lambda remote=remote, row=row, links=links: writer.apply(remote, row, links))
    if tags.complete:
        for tag_id, row in sorted(local.items()):
            if tag_id not in tags.listed and not row.is_removed:
                writer.guarded(tag_id, row.name, lambda row=row: writer.remove(row))
    writer.flush()
    result.counters.update(writer.counters)
    result.counters["remote_tags"] = len(tags.listed)
    if tags.problems:
        result.counters["tags_unreadable"] = len(tags.problems)
    if app_settings.MIRROR_TAGS and not dry_run:
        result.counters.update(sync_tag_groups(source, list(ExternalTag.objects.filter(source=source))))
    logger.info("wecom_sync.tags.applied", extra={"run_id": run.pk, "counters": dict(result.counters)})
    return result


# -- events ----------------------------------------------------------------------------------------------


def _client(source: Any) -> WeComClient:
    return WeComClient.from_source(source, credential="app" if source.secret else "contact_sync")


def apply_tag_event(source: Any, run: SyncRun, tag_id: int) -> dict[str, int]:
    """Re-read one tag with tag/get and apply it (removed when WeCom says it is gone); return counters."""
    writer = _TagWriter(source, run)
    local = ExternalTag.objects.filter(source=source, tag_id=int(tag_id)).first()
    try:
        item = _client(source).get_tag(int(tag_id))
    except WeComAPIError as exc:
        if exc.errcode not in TAG_GONE_ERRCODES:
            raise
        if local is not None and not local.is_removed:
            writer.remove(local)
    else:
        remote = RemoteTag.from_api(int(tag_id), item)
        writer.load_targets([remote])
        users, depts = writer.links([local.pk] if local else [])
        links = (users.get(local.pk, set()), depts.get(local.pk, set())) if local else (set(), set())
        writer.apply(remote, local, links)
    writer.flush()
    counters = Counter(writer.counters)
    if app_settings.MIRROR_TAGS:
        counters.update(sync_tag_groups(source, list(ExternalTag.objects.filter(source=source, tag_id=int(tag_id)))))
    return dict(counters)


def _payload_ids(payload: dict[str, Any], *names: str) -> set[str]:
    out = set()
    for name in names:
        value = payload.get(name)
        if isinstance(value, str) and value.strip():
            out.add(value.strip())
    return out


def refresh_after_events(source: Any, run: SyncRun, kind: str, events: Iterable[Any]) -> dict[str, int]:
    """After member or department events: link tags to objects they list that were mirrored since, and
    bring the mirrored groups of the tags concerned up to date. No WeCom call; a no-op without SYNC_TAGS."""
    if not app_settings.SYNC_TAGS:
        return {}
    tags = list(ExternalTag.objects.filter(source=source, is_removed=False))
    if not tags:
        return {}
    events = list(events)
    relink: list[ExternalTag] = []
    affected: set[int] = set()
    if kind == "user":
        keys = {normalize_userid(u) for e in events for u in _payload_ids(e.payload or {}, "UserID", "NewUserID")}
        keys |= {normalize_userid(e.object_id) for e in events if e.object_id}
        for tag in tags:
            listed = {normalize_userid(str(u.get("userid") if isinstance(u, dict) else u))
                      for u in (tag.raw or {}).get("userlist") or ()}
            if listed & keys:
                relink.append(tag)
        if app_settings.MIRROR_TAGS:
            ext = ExternalUser.objects.filter(source=source, userid_key__in=keys)
            accounts = [u for u in ext.values_list("user_id", flat=True) if u]
            affected |= set(_user_links().objects.filter(externaluser__in=ext).values_list("externaltag_id", flat=True))
            affected |= set(_tracked().objects.filter(**{f"{_tracked_user_column()}_id__in": accounts})
                            .values_list("externaltag_id", flat=True))
            # Joining: the tags listing one of the members' departments or a department above them.
            under = _with_ancestors(source, set(ExternalMembership.objects.filter(user__in=ext).values_list(
                "department_id", flat=True)))
            affected |= set(_dept_links().objects.filter(externaltag__in=tags, externaldepartment_id__in=under)
                            .values_list("externaltag_id", flat=True))
    else:
        ids = {int(e.object_id) for e in events if str(e.object_id).isdigit()}
        for tag in tags:
            if ids & {int(d) for d in (tag.raw or {}).get("partylist") or () if str(d).isdigit()}:
                relink.append(tag)
        if app_settings.MIRROR_TAGS:
            # A department that moved or went away changes who is under the tags' departments.
            affected |= set(_dept_links().objects.filter(externaltag__in=tags).values_list("externaltag_id",
                                                                                          flat=True))
    writer = _TagWriter(source, run)
    remotes = [(tag, RemoteTag.from_api(tag.tag_id, tag.raw or {})) for tag in relink]
    writer.load_targets(r for _t, r in remotes)
    users, depts = writer.links([t.pk for t, _r in remotes])
    for tag, remote in remotes:
        writer.apply(remote, tag, (users[tag.pk], depts[tag.pk]))
    writer.flush()
    counters = Counter(writer.counters)
    counters.pop(counter_key(SyncRunChange.ObjectType.TAG, UNCHANGED), None)
    affected |= writer.touched
    if app_settings.MIRROR_TAGS and affected:
        counters.update(sync_tag_groups(source, [t for t in tags if t.pk in affected]))
    return dict(counters)


def _with_ancestors(source: Any, department_pks: set[int]) -> set[int]:
    """Return these departments and every department above them (local primary keys)."""
    parents = dict(ExternalDepartment.objects.filter(source=source).values_list("pk", "parent_id"))
    out: set[int] = set()
    for pk in department_pks:
        current: int | None = pk
        while current is not None and current not in out:
            out.add(current)
            current = parents.get(current)
    return out


# -- mirrored groups -------------------------------------------------------------------------------------


def desired_members(source: Any, tags: Sequence[ExternalTag]) -> dict[int, set[int]]:
    """Return, by tag pk, the Django user pks a tag stands for: its members, and the members of its
    departments and of their sub-departments (removed members and departments left out)."""
    live = [t.pk for t in tags if not t.is_removed]
    out: dict[int, set[int]] = {t.pk: set() for t in tags}
    dept_links: list[tuple[int, int]] = []
    for part in chunks(live, _IN_CHUNK):
        for tag_pk, user_pk in _user_links().objects.filter(
                externaltag_id__in=part, externaluser__is_removed=False, externaluser__user__isnull=False
        ).values_list("externaltag_id", "externaluser__user_id"):
            out[tag_pk].add(user_pk)
        dept_links += list(_dept_links().objects.filter(
            externaltag_id__in=part, externaldepartment__is_removed=False
        ).values_list("externaltag_id", "externaldepartment_id"))
    if not dept_links:
        return out
    children: dict[int, list[int]] = {}
    for pk, parent in ExternalDepartment.objects.filter(source=source, is_removed=False).values_list("pk", "parent_id"):
        if parent is not None:
            children.setdefault(parent, []).append(pk)
    subtrees: dict[int, set[int]] = {}
    for _tag, dept in dept_links:
        if dept not in subtrees:
            seen, stack = set(), [dept]
            while stack:
                current = stack.pop()
                if current not in seen:
                    seen.add(current)
                    stack.extend(children.get(current, ()))
            subtrees[dept] = seen
    wanted = sorted(set().union(*subtrees.values()))
    members: dict[int, set[int]] = {}
    for part in chunks(wanted, _IN_CHUNK):
        for dept_pk, user_pk in ExternalMembership.objects.filter(
                department_id__in=part, user__is_removed=False, user__user__isnull=False
        ).values_list("department_id", "user__user_id"):
            members.setdefault(dept_pk, set()).add(user_pk)
    for tag_pk, dept in dept_links:
        for sub in subtrees[dept]:
            out[tag_pk] |= members.get(sub, set())
    return out


def _group_names(source: Any, tag: ExternalTag) -> tuple[str, str]:
    """The name of a tag's group, and the one used when another group already has that name."""
    base = (tag.name or _("Tag %(id)s") % {"id": tag.tag_id})[:120]
    return base, f"{base} ({source.slug}-tag-{tag.tag_id})"[:150]


def _group_name(source: Any, tag: ExternalTag, own: Group | None) -> str:
    base, fallback = _group_names(source, tag)
    taken = Group.objects.filter(name=base)
    if own is not None:
        taken = taken.exclude(pk=own.pk)
    return fallback if taken.exists() else base


class _GroupColumns:
    """The through tables and column names of user groups and of the sync's own group members."""

    def __init__(self, groups_field: Any) -> None:
        self.through = groups_field.remote_field.through
        self.user = f"{groups_field.m2m_field_name()}_id"
        self.group = f"{groups_field.m2m_reverse_field_name()}_id"
        self.tracked = _tracked()
        self.tracked_user = f"{_tracked_user_column()}_id"


def _sync_group(source: Any, tag: ExternalTag, want: set[int], c: _GroupColumns, counters: Counter[str]) -> None:
    """Create (or rename) one tag's group and bring its members to ``want``, removing only the sync's own."""
    group = Group.objects.filter(pk=tag.group_id).first() if tag.group_id else None
    if group is None and tag.is_removed:
        return
    if group is None:
        group = Group.objects.create(name=_group_name(source, tag, None))
        ExternalTag.objects.filter(pk=tag.pk).update(group=group)
        tag.group_id = group.pk
        counters["tag_groups_created"] += 1
    elif not tag.is_removed and group.name not in _group_names(source, tag):
        group.name = _group_name(source, tag, group)
        group.save(update_fields=["name"])
    present = set(c.through.objects.filter(**{c.group: group.pk}).values_list(c.user, flat=True))
    tracked = set(c.tracked.objects.filter(externaltag_id=tag.pk).values_list(c.tracked_user, flat=True))
    add = sorted(want - present)
    drop = sorted((tracked - want) & present)  # never someone the sync did not put in
    if add:
        c.through.objects.bulk_create([c.through(**{c.user: u, c.group: group.pk}) for u in add],
                                      ignore_conflicts=True)
        c.tracked.objects.bulk_create([c.tracked(**{"externaltag_id": tag.pk, c.tracked_user: u}) for u in add],
                                      ignore_conflicts=True)
    if drop:
        c.through.objects.filter(**{c.group: group.pk, f"{c.user}__in": drop}).delete()
    if tracked - want:
        c.tracked.objects.filter(**{"externaltag_id": tag.pk, f"{c.tracked_user}__in": sorted(tracked - want)}).delete()
    counters["tag_group_members_added"] += len(add)
    counters["tag_group_members_removed"] += len(drop)


def sync_tag_groups(source: Any, tags: Sequence[ExternalTag]) -> Counter[str]:
    """Create the groups of these tags as needed and bring their members up to date; return counters.

    Only members the sync added are ever removed; a removed tag's group stays (with any permissions given
    to it), emptied of the members the sync had added.
    """
    counters: Counter[str] = Counter()
    user_model = get_user_model()
    try:
        groups_field = user_model._meta.get_field("groups")
    except Exception:  # noqa: BLE001 - a custom user model without groups: nothing to mirror
        return counters
    columns = _GroupColumns(groups_field)
    desired = desired_members(source, tags)
    for tag in tags:
        try:
            with transaction.atomic():
                _sync_group(source, tag, desired.get(tag.pk, set()), columns, counters)
        except Exception as exc:  # noqa: BLE001 - one tag's group must not stop the others (rule 8)
            logger.warning("wecom_sync.tags.group_failed",
                           extra={"tag_id": tag.tag_id, "error_type": type(exc).__name__})
            counters["tags_failed"] += 1
    return counters


__all__ = [
    "TAG_CHANGE_TYPES",
    "TagResult",
    "apply_tag_event",
    "apply_tag_snapshot",
    "desired_members",
    "refresh_after_events",
    "sync_tag_groups",
]
