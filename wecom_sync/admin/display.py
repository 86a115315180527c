"""What the wecom_sync admin shows, built without a request: status badges, run counter labels and messages,
and the department tree."""

from __future__ import annotations

from typing import Any

from django.db.models import Count
from django.utils.html import format_html
from django.utils.translation import gettext

from ..models import ExternalDepartment, SyncRun, SyncSource
from ..sync.runlog import COUNTER_LABELS

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
