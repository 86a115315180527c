"""Entry points for the event inbox: apply, remove or rename exactly the named objects."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from ..conf import app_settings
from ..models import ExternalDepartment, ExternalUser, SyncRun, SyncRunChange, SyncSource
from .applier import Applier
from .batch import Batch
from .bulk import chunks
from .local import load_local_state
from .plan import (
    build_plan,
)
from .runlog import counter_key
from .snapshot import RemoteDepartment, RemoteUser, normalize_userid


def _event_applier(source: SyncSource, run: SyncRun) -> Applier:
    applier = Applier(source, run)
    applier.load_departments()
    return applier


def apply_remote_objects(
    source: SyncSource,
    run: SyncRun,
    *,
    departments: Sequence[RemoteDepartment] = (),
    users: Sequence[RemoteUser] = (),
) -> dict[str, int]:
    """Create, update, move or reactivate exactly these objects; never remove anything else."""
    applier = _event_applier(source, run)
    local = load_local_state(source, user_keys=[u.key for u in users])
    plan = build_plan(
        {d.id: d for d in departments},
        {u.key: u for u in users},
        local,
        root_id=source.root_department_id,
        full=False,
        complete=False,
        is_active=applier.adapter.is_active_for_status,
    )
    applier.apply(plan)
    mark_seen(source, user_keys=[u.key for u in users], department_ids=[d.id for d in departments])
    return dict(applier.counters)


def mark_seen(source: SyncSource, *, user_keys: Sequence[str] = (), department_ids: Sequence[int] = ()) -> None:
    """Record that WeCom has just confirmed these objects exist, changed or not (approvals read it)."""
    now = timezone.now()
    for keys in chunks(sorted(set(user_keys)), app_settings.BATCH_SIZE):
        ExternalUser.objects.filter(source=source, userid_key__in=keys, is_removed=False).update(last_seen_at=now)
    for ids in chunks(sorted(set(department_ids)), app_settings.BATCH_SIZE):
        ExternalDepartment.objects.filter(source=source, department_id__in=ids, is_removed=False).update(
            last_seen_at=now
        )


def remove_users(source: SyncSource, run: SyncRun, userids: Sequence[str]) -> dict[str, int]:
    """Apply the source's removal policy to these users (no threshold: they were named one by one)."""
    applier = _event_applier(source, run)
    local = load_local_state(source, user_keys=[normalize_userid(u) for u in userids], with_memberships=False)
    applier.remove_user_rows([u for u in local.users.values() if not u.is_removed])
    return dict(applier.counters)


def remove_departments(source: SyncSource, run: SyncRun, department_ids: Sequence[int]) -> dict[str, int]:
    """Mark these departments removed and delete their memberships; their users stay."""
    applier = _event_applier(source, run)
    wanted = {int(d) for d in department_ids}
    local = load_local_state(source, user_keys=[], with_memberships=False)
    rows = [d for d in local.departments.values() if d.department_id in wanted and not d.is_removed]
    applier.remove_department_rows(rows)
    return dict(applier.counters)


def rename_user(source: SyncSource, run: SyncRun, old_userid: str, new_userid: str,
                counters: dict[str, int] | None = None) -> bool:
    """Re-key a member from ``old_userid`` to ``new_userid``; the Django user stays the same.

    A conflict (``new_userid`` is mapped to someone else) is recorded as a failed change and counted as
    ``users_failed`` in ``counters`` when given.
    """
    old_key, new_key = normalize_userid(old_userid), normalize_userid(new_userid)
    ext = ExternalUser.objects.filter(source=source, userid_key=old_key).first()
    if ext is None or not new_key:
        return False
    applier = Applier(source, run)
    batch = Batch()
    if new_key != old_key and ExternalUser.objects.filter(source=source, userid_key=new_key).exists():
        applier.change(batch, SyncRunChange.ObjectType.USER, new_userid, SyncRunChange.Action.FAILED, name=ext.name,
                       error=_("Cannot rename %(old)s: the userid %(new)s is already mapped.")
                       % {"old": old_userid, "new": new_userid}, applied=False)
        applier._record_only(batch)
        if counters is not None:
            key = counter_key(SyncRunChange.ObjectType.USER, SyncRunChange.Action.FAILED)
            counters[key] = counters.get(key, 0) + 1
        return False
    if ext.userid == new_userid:
        return True
    with transaction.atomic():
        old = ext.userid
        ext.userid = new_userid
        ext.save(update_fields=["userid", "userid_key", "updated_at"])
        applier.change(batch, SyncRunChange.ObjectType.USER, new_userid, SyncRunChange.Action.UPDATED, name=ext.name,
                       fields={"userid": [old, new_userid]})
        applier._record_only(batch)
    return True


__all__ = [
    "apply_remote_objects",
    "mark_seen",
    "remove_departments",
    "remove_users",
    "rename_user",
]
