"""Admin of the callback inbox: received events, their status, and reprocessing."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from ..events import reprocess_events
from ..models import CallbackEvent
from .base import ReadOnlyAdmin, RunSyncPermissionMixin, log_action
from .display import badge


@admin.register(CallbackEvent)
class CallbackEventAdmin(RunSyncPermissionMixin, ReadOnlyAdmin):
    """The callback inbox: events as received, read-only, with a "Reprocess" action for run_sync users."""

    list_display = ("received_at", "source", "change_type", "object_id", "status_badge", "attempts", "run")
    list_filter = ("source", "status", "change_type")
    search_fields = ("object_id", "dedupe_key")
    list_select_related = ("source", "run")
    actions = ["reprocess_action"]

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, obj: CallbackEvent) -> str:
        return badge(obj.status, obj.get_status_display())

    def reprocess(self, queryset: QuerySet) -> int:
        """Reset the events and enqueue them again; return how many were queued."""
        return reprocess_events(queryset)

    @admin.action(description=_("Reprocess the selected events"), permissions=["run_sync"])
    def reprocess_action(self, request: HttpRequest, queryset: QuerySet) -> None:
        events = list(queryset)
        count = self.reprocess(queryset)
        for event in events:
            log_action(request, event, gettext("Reprocessed."))
        self.message_user(request, ngettext(
            "Queued %(count)d event again.", "Queued %(count)d events again.", count) % {"count": count},
            messages.SUCCESS)
