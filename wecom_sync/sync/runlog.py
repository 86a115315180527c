"""The run log: counter keys, their labels and finishing a run. The one place for each.

Every module that counts, labels or closes a run (the writers, the runner, the services, the admin, the
``wecom_sync`` command) goes through here, so a counter has one spelling and a finished run one shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..models import SyncRun, SyncRunChange

#: The prefix of the counters of each kind of object ("users_created", "departments_failed", "tags_updated").
COUNTER_PREFIXES: dict[str, str] = {
    SyncRunChange.ObjectType.USER: "users",
    SyncRunChange.ObjectType.DEPARTMENT: "departments",
    SyncRunChange.ObjectType.TAG: "tags",
}
#: Counters of objects that could not be applied; any of them makes a run partial.
FAILED_KEYS = tuple(f"{prefix}_{SyncRunChange.Action.FAILED}" for prefix in COUNTER_PREFIXES.values())
#: The action of the counters of objects a run found as they were ("users_unchanged").
UNCHANGED = "unchanged"
#: Prefix of the counters of an approval, added to the held run's own ("approved_users_deactivated").
APPROVED_PREFIX = "approved_"
#: The fields a finished run has written (progress and counters included, as the runner sets them).
FINISH_FIELDS = (
    "status", "finished_at", "heartbeat_at", "message", "counters", "progress_done", "progress_total",
    "snapshot_complete", "started_at",
)


def counter_key(object_type: str, action: str) -> str:
    """Return the counter of ``action`` on an object of ``object_type`` ("users_created")."""
    return f"{COUNTER_PREFIXES[object_type]}_{action}"


def count_failures(counters: Mapping[str, int]) -> int:
    """Return how many objects of a run's counters could not be applied."""
    return sum(counters.get(key, 0) for key in FAILED_KEYS)


#: The admin's and the command's label of each counter key.
COUNTER_LABELS = {
    "departments_created": _("departments created"),
    "departments_updated": _("departments updated"),
    "departments_moved": _("departments moved"),
    "departments_removed": _("departments removed"),
    "departments_deleted": _("departments deleted"),
    "departments_failed": _("departments failed"),
    "departments_skipped": _("departments skipped"),
    "departments_unchanged": _("departments unchanged"),
    "users_created": _("users created"),
    "users_updated": _("users updated"),
    "users_moved": _("users moved"),
    "users_deactivated": _("users deactivated"),
    "users_reactivated": _("users reactivated"),
    "users_deleted": _("users deleted"),
    "users_removed": _("users removed (mapping only)"),
    "users_skipped": _("users skipped"),
    "users_failed": _("users failed"),
    "users_unchanged": _("users unchanged"),
    "users_renamed": _("userids renamed"),
    "pending_removals": _("removals pending approval"),
    "remote_users": _("members in WeCom"),
    "remote_departments": _("departments in WeCom"),
    "api_calls": _("API calls"),
    "fetch_seconds": _("fetch seconds"),
    "events": _("events"),
    "event_failed": _("events failed"),
    "approved_skipped": _("approved removals skipped"),
    "tags_created": _("tags created"),
    "tags_updated": _("tags updated"),
    "tags_removed": _("tags removed"),
    "tags_reactivated": _("tags reactivated"),
    "tags_failed": _("tags failed"),
    "tags_unchanged": _("tags unchanged"),
    "tags_unreadable": _("tags unreadable"),
    "remote_tags": _("tags in WeCom"),
    "tag_groups_created": _("tag groups created"),
    "tag_group_members_added": _("tag group members added"),
    "tag_group_members_removed": _("tag group members removed"),
}


def append_message(run: SyncRun, text: str) -> None:
    """Add a line to the run's message (not saved)."""
    if text:
        run.message = (run.message + "\n" + text).strip() if run.message else text


def finish_run(
    run: SyncRun,
    status: str,
    message: str = "",
    *,
    at: datetime | None = None,
    fields: tuple[str, ...] | None = FINISH_FIELDS,
) -> SyncRun:
    """Close ``run`` with ``status`` (now, or ``at``), add ``message`` and save ``fields`` (None: every field)."""
    run.status = status
    run.finished_at = at or timezone.now()
    run.heartbeat_at = run.finished_at
    append_message(run, message)
    run.save(update_fields=None if fields is None else list(fields))
    return run
