"""Labels and badges of the wecom_sync admin, built without a request."""

from __future__ import annotations

from typing import Any

from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

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
