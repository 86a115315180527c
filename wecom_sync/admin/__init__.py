"""Django admin of wecom_sync: sources with Sync now / Dry run / Test connection, runs with live progress
and approval of held removals, read-only mirrors of the directory, and the callback inbox.

Django autodiscovers this package; importing each area module registers its ModelAdmins.
"""

from __future__ import annotations

from . import directory, inbox, runs, sources  # noqa: F401 - registers the ModelAdmins
from . import messages as admin_messages
from .base import RUN_SYNC_PERMISSION, ReadOnlyAdmin, RunSyncPermissionMixin, can_run_sync, log_action, object_or_404
from .directory import (
    ExternalDepartmentAdmin,
    ExternalMembershipAdmin,
    ExternalTagAdmin,
    ExternalUserAdmin,
    ManualLinkForm,
    MembershipInline,
)
from .display import COUNTER_LABELS, STATUS_COLOURS, badge, counter_label, counter_rows, summarize_counters
from .inbox import CallbackEventAdmin
from .runs import ActionFilter, SyncRunAdmin, SyncRunChangeAdmin, queued_too_long, run_progress
from .sources import SyncSourceAdmin

__all__ = [
    "COUNTER_LABELS", "RUN_SYNC_PERMISSION", "STATUS_COLOURS", "ActionFilter", "CallbackEventAdmin",
    "ExternalDepartmentAdmin", "ExternalMembershipAdmin", "ExternalTagAdmin", "ExternalUserAdmin", "ManualLinkForm",
    "MembershipInline", "ReadOnlyAdmin", "RunSyncPermissionMixin", "SyncRunAdmin", "SyncRunChangeAdmin",
    "SyncSourceAdmin", "badge", "can_run_sync", "counter_label", "counter_rows", "log_action", "object_or_404",
    "queued_too_long", "run_progress", "summarize_counters",
]

# The "Send a WeCom message" action on Django users and WeCom users.
admin_messages.install()
