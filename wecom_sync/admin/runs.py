"""Admin of sync runs: live progress, the planned changes, approval of held removals, retry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from .. import services
from ..conf import app_settings
from ..models import SyncRun, SyncRunChange
from .base import ReadOnlyAdmin, RunSyncPermissionMixin, can_run_sync, log_action, object_or_404
from .display import badge, counter_label, counter_rows, not_started_message, summarize_counters

#: The run page lists at most this many planned changes (and held removals); the totals count them all.
PAGE_ROWS = 500
RETRYABLE = (SyncRun.Status.FAILED, SyncRun.Status.PARTIAL, SyncRun.Status.CANCELLED, SyncRun.Status.REJECTED)


class ActionFilter(admin.SimpleListFilter):
    title = _("action")
    parameter_name = "action"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list:
        return SyncRunChange.Action.choices

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(action=self.value()) if self.value() else queryset


@admin.register(SyncRun)
class SyncRunAdmin(RunSyncPermissionMixin, ReadOnlyAdmin):
    change_form_template = "admin/wecom_sync/syncrun/change_form.html"
    list_display = ("run_label", "source", "kind", "trigger", "status_badge", "progress", "duration_display",
                    "counters_display", "created_at")
    list_filter = ("source", "status", "kind", "trigger")
    list_select_related = ("source",)
    date_hierarchy = "created_at"
    fields = ("source", "kind", "trigger", "status", "force", "created_at", "started_at", "finished_at",
              "heartbeat_at", "snapshot_complete", "message", "task_id", "requested_by", "decided_by",
              "decided_at")

    @admin.display(description=_("run"), ordering="id")
    def run_label(self, obj: SyncRun) -> str:
        return f"#{obj.pk}"

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, obj: SyncRun) -> str:
        return badge(obj.status, obj.get_status_display())

    @admin.display(description=_("progress"))
    def progress(self, obj: SyncRun) -> str:
        if not obj.progress_total:
            return "-"
        return f"{obj.progress_done}/{obj.progress_total}"

    @admin.display(description=_("duration"))
    def duration_display(self, obj: SyncRun) -> str:
        duration = obj.duration
        return f"{duration.total_seconds():.1f} s" if duration is not None else "-"

    @admin.display(description=_("counters"))
    def counters_display(self, obj: SyncRun) -> str:
        return summarize_counters(obj.counters)

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/progress/", wrap(self.progress_view), name="wecom_sync_syncrun_progress"),
            path("<int:pk>/approve/", wrap(require_POST(self.approve_view)), name="wecom_sync_syncrun_approve"),
            path("<int:pk>/reject/", wrap(require_POST(self.reject_view)), name="wecom_sync_syncrun_reject"),
            path("<int:pk>/retry/", wrap(require_POST(self.retry_view)), name="wecom_sync_syncrun_retry"),
        ] + super().get_urls()

    def progress_view(self, request: HttpRequest, pk: int) -> JsonResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        run = get_object_or_404(SyncRun, pk=pk)
        return JsonResponse(run_progress(run))

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict | None = None) -> HttpResponse:
        run = object_or_404(SyncRun, object_id)
        extra = {
            **run_page_context(run, action=request.GET.get("action", ""),
                               object_type=request.GET.get("object_type", "")),
            "can_run_sync": can_run_sync(request),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, extra)

    def _decide(self, request: HttpRequest, pk: int, decide: Callable[..., Any], *, refused: str, logged: str,
                done: str) -> HttpResponse:
        """Approve or reject a held run with ``decide``; report, record it and go back to the run page."""
        self._require_run_sync(request)
        run = get_object_or_404(SyncRun, pk=pk)
        if run.status != SyncRun.Status.HELD:
            self.message_user(request, refused, messages.ERROR)
        else:
            try:
                decide(run, user=request.user)
            except services.RunStateError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                log_action(request, run, logged)
                self.message_user(request, done, messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:wecom_sync_syncrun_change", args=[pk]))

    def approve_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        return self._decide(request, pk, services.approve_run,
                            refused=gettext("Only a held run can be approved."),
                            logged=gettext("Approved the held removals."),
                            done=gettext("Approved: the held removals are being applied."))

    def reject_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        return self._decide(request, pk, services.reject_run,
                            refused=gettext("Only a held run can be rejected."),
                            logged=gettext("Rejected the held removals."),
                            done=gettext("Rejected: nobody was removed."))

    def retry_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        self._require_run_sync(request)
        run = get_object_or_404(SyncRun, pk=pk)
        if run.status not in RETRYABLE:
            self.message_user(request, gettext("Only a failed, partial, cancelled or rejected run can be retried."),
                              messages.ERROR)
            return HttpResponseRedirect(reverse("admin:wecom_sync_syncrun_change", args=[pk]))
        new_run = services.enqueue_full_sync(run.source, dry_run=run.kind == SyncRun.Kind.DRY_RUN,
                                             trigger="retry", requested_by=request.user)
        log_action(request, run, gettext("Retried as run #%(run)s.") % {"run": new_run.pk})
        if new_run.status == SyncRun.Status.FAILED:
            self.message_user(request, not_started_message(new_run), messages.ERROR)
        else:
            log_action(request, run.source, gettext("Started a sync (run #%(run)s).") % {"run": new_run.pk})
            self.message_user(request, gettext("Queued a new run."), messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:wecom_sync_syncrun_change", args=[new_run.pk]))


def run_page_context(run: SyncRun, *, action: str = "", object_type: str = "") -> dict[str, Any]:
    """Return what the run page shows: its changes (filtered by action and object type), held removals,
    progress and counters."""
    changes = run.changes.all()
    if action:
        changes = changes.filter(action=action)
    if object_type:
        changes = changes.filter(object_type=object_type)
    counts = dict(run.changes.values_list("action").annotate(n=Count("id")).values_list("action", "n"))
    held = run.status == SyncRun.Status.HELD
    pending = run.changes.filter(applied=False).exclude(action="failed")
    return {
        "run": run,
        "changes": changes[:PAGE_ROWS],
        "changes_total": changes.count(),
        "action_counts": [(value, label, counts.get(value, 0)) for value, label in SyncRunChange.Action.choices
                          if counts.get(value)],
        "selected_action": action,
        "pending_removals": pending[:PAGE_ROWS] if held else [],
        "pending_count": pending.count() if held else 0,
        "progress": run_progress(run),
        "counter_rows": counter_rows(run.counters),
        "queued_hint": queued_too_long(run),
    }


def queued_too_long(run: SyncRun) -> bool:
    """Tell whether a run is still queued QUEUED_HINT_SECONDS after it was created (no worker took it)."""
    limit = timezone.now() - timedelta(seconds=app_settings.QUEUED_HINT_SECONDS)
    return run.status == SyncRun.Status.QUEUED and run.created_at <= limit


def run_progress(run: SyncRun) -> dict:
    """Return the JSON the run page polls: status, progress and counters."""
    percent = round(100 * run.progress_done / run.progress_total, 1) if run.progress_total else None
    return {
        "id": run.pk,
        "status": run.status,
        "status_display": str(run.get_status_display()),
        "finished": run.is_finished or run.status == SyncRun.Status.HELD,
        "done": run.progress_done,
        "total": run.progress_total,
        "percent": percent,
        "counters": run.counters or {},
        "counter_labels": {key: counter_label(key) for key in (run.counters or {})},
        "message": run.message,
    }


@admin.register(SyncRunChange)
class SyncRunChangeAdmin(ReadOnlyAdmin):
    list_display = ("run", "object_type", "external_id", "display_name", "action", "applied", "error")
    list_filter = (ActionFilter, "object_type", "applied", "run__source")
    search_fields = ("external_id", "display_name")
    list_select_related = ("run",)
    raw_id_fields = ("run",)
