"""What the wecom_sync admin shows, built without a request: status badges, run counter labels and messages,
and the department tree."""

from __future__ import annotations

from typing import Any

from django.db.models import Count
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from ..models import ExternalDepartment, SyncRun, SyncSource

STATUS_COLOURS = {
    "queued": "#6c757d", "running": "#0d6efd", "succeeded": "#198754", "partial": "#fd7e14",
    "failed": "#dc3545", "held": "#6f42c1", "cancelled": "#6c757d", "rejected": "#6c757d",
    "pending": "#0d6efd", "applied": "#198754", "ignored": "#6c757d",
}


def badge(status: str, label: str) -> str:
    """Return a coloured status badge."""
    return format_html(
        '<span class="wecom-badge wecom-status-{}" style="background:{};color:#fff;padding:2px 8px;'
        'border-radius:10px;font-size:11px;white-space:nowrap">{}</span>',
        status, STATUS_COLOURS.get(status, "#6c757d"), label,
    )


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


def counter_label(key: str) -> str:
    """Return the translated label of a run counter ("users_created" → "users created")."""
    if key in COUNTER_LABELS:
        return str(COUNTER_LABELS[key])
    if key.startswith("approved_") and key[len("approved_"):] in COUNTER_LABELS:
        return gettext("approved: %(label)s") % {"label": COUNTER_LABELS[key[len("approved_"):]]}
    return key.replace("_", " ")


def counter_rows(counters: dict | None) -> list[tuple[str, str, Any]]:
    """Return (key, translated label, value) for the non-zero counters of a run, sorted by key."""
    return [(key, counter_label(key), value) for key, value in sorted((counters or {}).items()) if value]


def summarize_counters(counters: dict | None) -> str:
    """Return "users created 3 · users updated 2" for the non-zero counters of a run."""
    parts = [f"{label} {value}" for _key, label, value in counter_rows(counters)]
    return " · ".join(parts) or "-"


def started_message(run: SyncRun) -> str:
    """Return the admin history line for a run just started ("Started a sync (run #12).")."""
    if run.kind == SyncRun.Kind.DRY_RUN:
        return gettext("Started a dry run (run #%(run)s).") % {"run": run.pk}
    return gettext("Started a sync (run #%(run)s).") % {"run": run.pk}


def not_started_message(run: SyncRun) -> str:
    """Return why a run was not sent to any worker, for the admin (the run's message says why)."""
    return gettext("%(source)s: the sync was not started. %(reason)s") % {
        "source": run.source.name, "reason": run.message}


# -- department tree ---------------------------------------------------------------------------------------

#: Indent of one tree level on the department tree page, in pixels.
TREE_INDENT = 24
TREE_FIELDS = ("id", "parent_id", "name", "department_id", "member_count", "order")


def tree_order(rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Return ``(depth, row)`` for department rows in depth-first order.

    Siblings come by WeCom ``order`` (higher first), then by department id. A row whose parent is not among
    ``rows`` (removed, or outside the synced root) is shown at the top level.
    """
    ids = {row["id"] for row in rows}
    children: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        parent = row["parent_id"] if row["parent_id"] in ids else None
        children.setdefault(parent, []).append(row)
    for items in children.values():
        items.sort(key=lambda r: (-r["order"], r["department_id"]))
    lines: list[tuple[int, dict[str, Any]]] = []
    stack = [(0, row) for row in reversed(children.get(None, []))]
    while stack:
        depth, row = stack.pop()
        lines.append((depth, row))
        stack.extend((depth + 1, child) for child in reversed(children.get(row["id"], [])))
    return lines


def department_tree(source: SyncSource) -> list[dict[str, Any]]:
    """Return the live departments of a source in tree order, each with ``member_count`` and ``indent``."""
    rows = list(
        ExternalDepartment.objects.filter(source=source, is_removed=False)
        .annotate(member_count=Count("memberships"))
        .values(*TREE_FIELDS)
    )
    return [{"indent": depth * TREE_INDENT, **row} for depth, row in tree_order(rows)]


def department_trees() -> list[tuple[SyncSource, list[dict[str, Any]]]]:
    """Return ``(source, department_tree(source))`` for every source, as the tree page lists them."""
    return [(source, department_tree(source)) for source in SyncSource.objects.all()]
