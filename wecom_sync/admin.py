"""Django admin of wecom_sync: sources with Sync now / Dry run / Test connection, runs with live progress
and approval of held removals, read-only mirrors of the directory, and the callback inbox."""

from __future__ import annotations

import contextvars
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from .forms import SECRET_FIELDS, SyncSourceForm, mask
from .models import (
    SECRETS_UNREADABLE_MESSAGE,
    CallbackEvent,
    ExternalDepartment,
    ExternalMembership,
    ExternalUser,
    SyncRun,
    SyncRunChange,
    SyncSource,
)

RUN_SYNC_PERMISSION = "wecom_sync.run_sync"
STATUS_COLOURS = {
    "queued": "#6c757d", "running": "#0d6efd", "succeeded": "#198754", "partial": "#fd7e14",
    "failed": "#dc3545", "held": "#6f42c1", "cancelled": "#6c757d", "rejected": "#6c757d",
    "pending": "#0d6efd", "applied": "#198754", "ignored": "#6c757d",
}

_current_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar(
    "wecom_sync_admin_request", default=None
)


def can_run_sync(request: HttpRequest) -> bool:
    """Whether the user may start, approve, retry or reprocess work."""
    return bool(request.user.is_active and request.user.has_perm(RUN_SYNC_PERMISSION))


def badge(status: str, label: str) -> str:
    """Return a coloured status badge."""
    return format_html(
        '<span class="wecom-badge wecom-status-{}" style="background:{};color:#fff;padding:2px 8px;'
        'border-radius:10px;font-size:11px;white-space:nowrap">{}</span>',
        status, STATUS_COLOURS.get(status, "#6c757d"), label,
    )


def log_action(request: HttpRequest, obj: Any, message: str) -> None:
    """Record an admin action on ``obj`` in the admin history (LogEntry), with the acting user."""
    from django.contrib.admin.models import CHANGE, LogEntry
    from django.contrib.contenttypes.models import ContentType

    user = getattr(request, "user", None)
    if user is None or not getattr(user, "pk", None):
        return
    if hasattr(LogEntry.objects, "log_actions"):  # Django 5.1+
        LogEntry.objects.log_actions(user.pk, [obj], CHANGE, change_message=message, single_object=True)
    else:
        content_type = ContentType.objects.get_for_model(type(obj))
        LogEntry.objects.log_action(
            user_id=user.pk, content_type_id=content_type.pk, object_id=obj.pk, object_repr=str(obj)[:200],
            action_flag=CHANGE, change_message=message,
        )


def object_or_404(model: Any, pk: Any) -> Any:
    """Return the row with this primary key, or raise Http404 for a missing or malformed id (never a 500)."""
    try:
        return model._default_manager.get(pk=pk)
    except (model.DoesNotExist, ValueError, TypeError, ValidationError, OverflowError) as exc:
        raise Http404 from exc


class RunSyncPermissionMixin:
    """Adds the ``run_sync`` permission check used by actions that start work."""

    def has_run_sync_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return can_run_sync(request)

    def _require_run_sync(self, request: HttpRequest) -> None:
        if not can_run_sync(request):
            raise PermissionDenied


class ReadOnlyAdmin(admin.ModelAdmin):
    """An admin that lists and shows rows written by the sync, never edits them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# -- sources -----------------------------------------------------------------------------------------


@admin.register(SyncSource)
class SyncSourceAdmin(RunSyncPermissionMixin, admin.ModelAdmin):
    form = SyncSourceForm
    change_form_template = "admin/wecom_sync/syncsource/change_form.html"
    list_display = ("name", "slug", "corp_id", "enabled", "fetch_strategy", "last_synced_at", "last_run",
                    "secrets_state")
    list_filter = ("enabled",)
    search_fields = ("name", "slug", "corp_id")
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("callback_url", "secrets_status", "last_synced_at", "recent_runs")
    actions = ["sync_now_action", "dry_run_action", "test_connection_action"]

    def get_fieldsets(self, request: HttpRequest, obj: SyncSource | None = None) -> list:
        credentials = ["agent_id", "secret", "contact_sync_secret"]
        callback = ["callback_url", "token", "encoding_aes_key"]
        if obj is not None:
            credentials.append("clear_contact_sync_secret")
            callback += ["clear_token", "clear_encoding_aes_key"]
        fieldsets = [
            (_("Identity"), {"fields": ["name", "slug", "corp_id", "enabled"]}),
            (_("Credentials"), {
                "fields": credentials,
                "description": _("Secrets are stored encrypted and never shown again. Leave a field blank to "
                                 "keep the stored value."),
            }),
            (_("Callback (real-time sync)"), {
                "fields": callback,
                "description": _("In the WeCom console, open Contacts Sync (通讯录同步) → Set the event-receiving "
                                 "server (设置接收事件服务器), and enter this URL, Token and EncodingAESKey."),
            }),
            (_("Behaviour"), {
                "fields": ["root_department_id", "fetch_strategy", "sync_interval_minutes", "removal_policy",
                           "removal_threshold_count", "removal_threshold_percent", "api_base_url"],
            }),
            (_("Sign in with WeCom"), {
                "fields": ["login_enabled", "login_agent_id", "login_silent_in_client"],
                "description": _("Members sign in with WeCom: by QR code in any browser, silently inside the WeCom "
                                 "client. In the WeCom console, set this site's domain as the app's trusted domain "
                                 "and web-login callback domain (see docs/login.md)."),
            }),
        ]
        if obj is not None:
            fieldsets.append((_("Status"), {"fields": ["recent_runs", "secrets_status", "last_synced_at"]}))
        if obj is not None and not self.has_change_permission(request, obj):
            # Read-only view: the secrets appear only masked, in "stored secrets"; never as fields.
            hidden = set(SECRET_FIELDS) | {f"clear_{name}" for name in SECRET_FIELDS}
            fieldsets = [(title, {**opts, "fields": [f for f in opts["fields"] if f not in hidden]})
                         for title, opts in fieldsets]
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple:
        return self.readonly_fields

    # Render while the request is known, so the callback URL can be absolute.
    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        token = _current_request.set(request)
        try:
            response = super().changeform_view(request, *args, **kwargs)
            if hasattr(response, "render") and not getattr(response, "is_rendered", True):
                response.render()
            return response
        finally:
            _current_request.reset(token)

    def render_change_form(self, request: HttpRequest, context: dict, *args: Any, **kwargs: Any) -> Any:
        context["can_run_sync"] = can_run_sync(request)
        obj = kwargs.get("obj")
        if obj is not None and request.method == "GET" and not obj.secrets_readable:
            self.message_user(request, SECRETS_UNREADABLE_MESSAGE, messages.ERROR)
        return super().render_change_form(request, context, *args, **kwargs)

    @admin.display(description=_("secrets"))
    def secrets_state(self, obj: SyncSource) -> str:
        if obj.secrets_readable:
            return "✔"
        return format_html('<span class="wecom-bad">{}</span>', SECRETS_UNREADABLE_MESSAGE)

    @admin.display(description=_("callback URL"))
    def callback_url(self, obj: SyncSource | None) -> str:
        if obj is None or not obj.pk:
            return gettext("Save the source first; the URL uses its slug.")
        url = obj.get_callback_url(_current_request.get())
        return format_html(
            '<code id="wecom-callback-url">{}</code> '
            '<button type="button" class="button" data-wecom-copy="wecom-callback-url">{}</button>',
            url, gettext("Copy"),
        )

    @admin.display(description=_("stored secrets"))
    def secrets_status(self, obj: SyncSource | None) -> str:
        if obj is None:
            return "-"
        if not obj.secrets_readable:
            return format_html('<span class="wecom-bad">{}</span>', SECRETS_UNREADABLE_MESSAGE)
        return format_html(
            "Secret: {} · {}: {} · Token: {} · EncodingAESKey: {}",
            mask(obj.secret), gettext("contact-sync secret"), mask(obj.contact_sync_secret),
            mask(obj.token), mask(obj.encoding_aes_key),
        )

    @admin.display(description=_("last run"))
    def last_run(self, obj: SyncSource) -> str:
        run = obj.runs.order_by("-created_at", "-id").first()
        if run is None:
            return "-"
        url = reverse("admin:wecom_sync_syncrun_change", args=[run.pk])
        return format_html('<a href="{}">{}</a>', url, badge(run.status, run.get_status_display()))

    @admin.display(description=_("recent runs"))
    def recent_runs(self, obj: SyncSource | None) -> str:
        if obj is None or not obj.pk:
            return "-"
        runs = list(obj.runs.order_by("-created_at", "-id")[:10])
        if not runs:
            return gettext("No run yet.")
        rows = format_html_join(
            "", '<tr><td><a href="{}">#{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (reverse("admin:wecom_sync_syncrun_change", args=[r.pk]), r.pk, r.get_kind_display(),
                 badge(r.status, r.get_status_display()), r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                 summarize_counters(r.counters))
                for r in runs
            ),
        )
        return format_html('<table class="wecom-recent-runs">{}</table>', rows)

    # -- work-starting logic, callable without a request --------------------------------------------
    def start_runs(self, queryset: QuerySet, *, dry_run: bool, user: Any = None) -> list[SyncRun]:
        """Enqueue a full sync (or dry run) for each enabled source; return the queued runs."""
        from . import services

        runs = []
        for source in queryset:
            if not source.enabled:
                continue
            runs.append(services.enqueue_full_sync(source, dry_run=dry_run, trigger="manual", requested_by=user))
        return runs

    def _log_started(self, request: HttpRequest, runs: list[SyncRun]) -> None:
        for run in runs:
            message = (gettext("Started a dry run (run #%(run)s).") if run.kind == SyncRun.Kind.DRY_RUN
                       else gettext("Started a sync (run #%(run)s).")) % {"run": run.pk}
            log_action(request, run.source, message)

    def _report_not_started(self, request: HttpRequest, run: SyncRun) -> None:
        self.message_user(request, gettext("%(source)s: the sync was not started. %(reason)s") % {
            "source": run.source.name, "reason": run.message}, messages.ERROR)

    def _report_started(self, request: HttpRequest, runs: list[SyncRun], skipped: int) -> None:
        failed = [run for run in runs if run.status == SyncRun.Status.FAILED]
        for run in failed:  # not sent to any worker: say why now, never "Queued"
            self._report_not_started(request, run)
        runs = [run for run in runs if run not in failed]
        if runs:
            self.message_user(request, ngettext(
                "Queued %(count)d run.", "Queued %(count)d runs.", len(runs)) % {"count": len(runs)},
                messages.SUCCESS)
        if skipped:
            self.message_user(request, ngettext(
                "%(count)d disabled source was skipped.", "%(count)d disabled sources were skipped.", skipped)
                % {"count": skipped}, messages.WARNING)

    @admin.action(description=_("Sync now"), permissions=["run_sync"])
    def sync_now_action(self, request: HttpRequest, queryset: QuerySet) -> None:
        runs = self.start_runs(queryset, dry_run=False, user=request.user)
        self._log_started(request, runs)
        self._report_started(request, runs, queryset.count() - len(runs))

    @admin.action(description=_("Dry run (plan only)"), permissions=["run_sync"])
    def dry_run_action(self, request: HttpRequest, queryset: QuerySet) -> None:
        runs = self.start_runs(queryset, dry_run=True, user=request.user)
        self._log_started(request, runs)
        self._report_started(request, runs, queryset.count() - len(runs))

    @admin.action(description=_("Test connection"), permissions=["run_sync"])
    def test_connection_action(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        from .diagnostics import probe_source

        results = [(source, probe_source(source)) for source in queryset]
        return TemplateResponse(request, "admin/wecom_sync/syncsource/test_connection.html", {
            **self.admin_site.each_context(request),
            "title": gettext("Test connection"),
            "results": results,
            "opts": self.model._meta,
        })

    # -- object tools: POST-only views ------------------------------------------------------------------
    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/sync/", wrap(require_POST(self.sync_view)), name="wecom_sync_syncsource_sync"),
            path("<int:pk>/dry-run/", wrap(require_POST(self.dry_run_view)), name="wecom_sync_syncsource_dryrun"),
            path("<int:pk>/test-connection/", wrap(require_POST(self.test_connection_view)),
                 name="wecom_sync_syncsource_test"),
        ] + super().get_urls()

    def _single(self, request: HttpRequest, pk: int) -> QuerySet:
        self._require_run_sync(request)
        source = get_object_or_404(SyncSource, pk=pk)
        return SyncSource.objects.filter(pk=source.pk)

    def sync_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        return self._start_and_redirect(request, self._single(request, pk), dry_run=False)

    def dry_run_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        return self._start_and_redirect(request, self._single(request, pk), dry_run=True)

    def _start_and_redirect(self, request: HttpRequest, queryset: QuerySet, *, dry_run: bool) -> HttpResponse:
        runs = self.start_runs(queryset, dry_run=dry_run, user=request.user)
        self._log_started(request, runs)
        if not runs:
            self.message_user(request, gettext("This source is disabled; enable it first."), messages.ERROR)
            return HttpResponseRedirect(reverse("admin:wecom_sync_syncsource_change", args=[queryset[0].pk]))
        self._report_started(request, runs, 0)
        return HttpResponseRedirect(reverse("admin:wecom_sync_syncrun_change", args=[runs[0].pk]))

    def test_connection_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        return self.test_connection_action(request, self._single(request, pk))


from .sync.runlog import COUNTER_LABELS  # noqa: E402 - the labels live with the counter keys


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


# -- runs --------------------------------------------------------------------------------------------


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
        changes = run.changes.all()
        action = request.GET.get("action", "")
        object_type = request.GET.get("object_type", "")
        if action:
            changes = changes.filter(action=action)
        if object_type:
            changes = changes.filter(object_type=object_type)
        counts = dict(run.changes.values_list("action").annotate(n=Count("id")).values_list("action", "n"))
        extra = {
            "run": run,
            "changes": changes[:500],
            "changes_total": changes.count(),
            "action_counts": [(value, label, counts.get(value, 0)) for value, label in SyncRunChange.Action.choices
                              if counts.get(value)],
            "selected_action": action,
            "pending_removals": run.changes.filter(applied=False).exclude(action="failed")[:500]
            if run.status == SyncRun.Status.HELD else [],
            "pending_count": run.changes.filter(applied=False).exclude(action="failed").count()
            if run.status == SyncRun.Status.HELD else 0,
            "can_run_sync": can_run_sync(request),
            "progress": run_progress(run),
            "counter_rows": counter_rows(run.counters),
            "queued_hint": queued_too_long(run),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, extra)

    def approve_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        from . import services

        self._require_run_sync(request)
        run = get_object_or_404(SyncRun, pk=pk)
        if run.status != SyncRun.Status.HELD:
            self.message_user(request, gettext("Only a held run can be approved."), messages.ERROR)
        else:
            try:
                services.approve_run(run, user=request.user)
            except services.RunStateError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                log_action(request, run, gettext("Approved the held removals."))
                self.message_user(request, gettext("Approved: the held removals are being applied."),
                                  messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:wecom_sync_syncrun_change", args=[pk]))

    def reject_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        from . import services

        self._require_run_sync(request)
        run = get_object_or_404(SyncRun, pk=pk)
        if run.status != SyncRun.Status.HELD:
            self.message_user(request, gettext("Only a held run can be rejected."), messages.ERROR)
        else:
            try:
                services.reject_run(run, user=request.user)
            except services.RunStateError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                log_action(request, run, gettext("Rejected the held removals."))
                self.message_user(request, gettext("Rejected: nobody was removed."), messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:wecom_sync_syncrun_change", args=[pk]))

    def retry_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        from . import services

        self._require_run_sync(request)
        run = get_object_or_404(SyncRun, pk=pk)
        if run.status not in (SyncRun.Status.FAILED, SyncRun.Status.PARTIAL, SyncRun.Status.CANCELLED,
                              SyncRun.Status.REJECTED):
            self.message_user(request, gettext("Only a failed, partial, cancelled or rejected run can be retried."),
                              messages.ERROR)
            return HttpResponseRedirect(reverse("admin:wecom_sync_syncrun_change", args=[pk]))
        new_run = services.enqueue_full_sync(run.source, dry_run=run.kind == SyncRun.Kind.DRY_RUN,
                                             trigger="retry", requested_by=request.user)
        log_action(request, run, gettext("Retried as run #%(run)s.") % {"run": new_run.pk})
        if new_run.status == SyncRun.Status.FAILED:
            self.message_user(request, gettext("%(source)s: the sync was not started. %(reason)s") % {
                "source": new_run.source.name, "reason": new_run.message}, messages.ERROR)
        else:
            log_action(request, run.source, gettext("Started a sync (run #%(run)s).") % {"run": new_run.pk})
            self.message_user(request, gettext("Queued a new run."), messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:wecom_sync_syncrun_change", args=[new_run.pk]))


def queued_too_long(run: SyncRun) -> bool:
    """Tell whether a run is still queued QUEUED_HINT_SECONDS after it was created (no worker took it)."""
    from datetime import timedelta

    from django.utils import timezone

    from .conf import app_settings

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


# -- mirrored directory --------------------------------------------------------------------------------


@admin.register(ExternalDepartment)
class ExternalDepartmentAdmin(ReadOnlyAdmin):
    list_display = ("name", "department_id", "source", "parent", "order", "members", "is_removed")
    list_filter = ("source", "is_removed")
    search_fields = ("name", "name_en", "=department_id")
    list_select_related = ("source", "parent")
    exclude = ("raw",)
    change_list_template = "admin/wecom_sync/externaldepartment/change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(member_count=Count("memberships"))

    @admin.display(description=_("members"), ordering="member_count")
    def members(self, obj: ExternalDepartment) -> int:
        return getattr(obj, "member_count", 0)

    def get_urls(self) -> list:
        return [
            path("tree/", self.admin_site.admin_view(self.tree_view), name="wecom_sync_externaldepartment_tree"),
        ] + super().get_urls()

    def tree_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        sources = []
        for source in SyncSource.objects.all():
            rows = list(
                ExternalDepartment.objects.filter(source=source, is_removed=False)
                .annotate(member_count=Count("memberships"))
                .values("id", "parent_id", "name", "department_id", "member_count", "order")
            )
            children: dict[Any, list] = {}
            ids = {row["id"] for row in rows}
            for row in rows:
                parent = row["parent_id"] if row["parent_id"] in ids else None
                children.setdefault(parent, []).append(row)
            for items in children.values():
                items.sort(key=lambda r: (-r["order"], r["department_id"]))
            lines: list[tuple[int, dict]] = []
            stack = [(0, row) for row in reversed(children.get(None, []))]
            while stack:
                depth, row = stack.pop()
                lines.append((depth, row))
                stack.extend((depth + 1, child) for child in reversed(children.get(row["id"], [])))
            sources.append((source, [{"indent": depth * 24, **row} for depth, row in lines]))
        return TemplateResponse(request, "admin/wecom_sync/externaldepartment/tree.html", {
            **self.admin_site.each_context(request),
            "title": gettext("Department tree"),
            "sources": sources,
            "opts": self.model._meta,
        })


class MembershipInline(admin.TabularInline):
    model = ExternalMembership
    fields = ("department", "is_leader", "is_main", "order")
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0


class ManualLinkForm(forms.Form):
    """Choose the existing account a WeCom member is linked to, by its login name."""

    username = forms.CharField(label=_("Django account (login name)"), max_length=254)

    def __init__(self, *args: Any, external_user: ExternalUser, acting_user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.external_user = external_user
        self.acting_user = acting_user

    def clean_username(self) -> Any:
        model = get_user_model()
        value = self.cleaned_data["username"].strip()
        user = model._default_manager.filter(**{model.USERNAME_FIELD: value}).first()
        if user is None:
            raise forms.ValidationError(_("No account has this login name."), code="no_user")
        taken = ExternalUser.objects.filter(source_id=self.external_user.source_id, user=user).exclude(
            pk=self.external_user.pk)
        if taken.exists():
            raise forms.ValidationError(_("This account is already linked to another member of this source."),
                                        code="taken")
        if (user.is_superuser or user.is_staff) and not self.acting_user.is_superuser:
            # Linking hands the account to whoever controls the member in WeCom: only a superuser may do
            # that for an account with admin rights.
            raise forms.ValidationError(_("Only a superuser can link an account with administrator rights."),
                                        code="admin_account")
        return user


@admin.register(ExternalUser)
class ExternalUserAdmin(ReadOnlyAdmin):
    list_display = ("userid", "name", "source", "status", "django_user", "account_origin", "is_removed",
                    "updated_at")
    list_filter = ("source", "status", "is_removed", "account_origin")
    search_fields = ("userid", "name", "user__username", "user__email")
    list_select_related = ("source", "user")
    exclude = ("raw",)
    readonly_fields = ("django_user", "link_by_hand")
    inlines = [MembershipInline]

    @staticmethod
    def can_link_by_hand(request: HttpRequest) -> bool:
        """Whether the user may link a member to an account by hand (the change_externaluser permission)."""
        return bool(request.user.is_active and request.user.has_perm("wecom_sync.change_externaluser"))

    @admin.display(description=_("link by hand"))
    def link_by_hand(self, obj: ExternalUser) -> str:
        request = _current_request.get()
        if obj.pk is None or request is None or not self.can_link_by_hand(request):
            return "-"
        url = reverse("admin:wecom_sync_externaluser_link", args=[obj.pk])
        return format_html('<a class="button" href="{}">{}</a>', url, gettext("Link to an account by hand"))

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        token = _current_request.set(request)
        try:
            response = super().changeform_view(request, *args, **kwargs)
            if hasattr(response, "render") and not getattr(response, "is_rendered", True):
                response.render()
            return response
        finally:
            _current_request.reset(token)

    def get_urls(self) -> list:
        return [
            path("<path:object_id>/link/", self.admin_site.admin_view(self.link_view),
                 name="wecom_sync_externaluser_link"),
        ] + super().get_urls()

    def link_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        from . import services

        if not self.can_link_by_hand(request):
            raise PermissionDenied
        ext = object_or_404(ExternalUser, object_id)
        form = ManualLinkForm(request.POST or None, external_user=ext, acting_user=request.user)
        if request.method == "POST" and form.is_valid():
            user = form.cleaned_data["username"]
            previous = ext.user.get_username() if ext.user_id else "-"
            services.link_account(ext, user)
            log_action(request, ext, gettext("Linked by hand to the account %(user)s (before: %(old)s).")
                       % {"user": user.get_username(), "old": previous})
            self.message_user(request, gettext("Linked."), messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:wecom_sync_externaluser_change", args=[ext.pk]))
        return TemplateResponse(request, "admin/wecom_sync/externaluser/link.html", {
            **self.admin_site.each_context(request),
            "title": gettext("Link %(member)s to an account by hand") % {"member": ext},
            "form": form,
            "external_user": ext,
            "opts": self.model._meta,
        })

    @admin.display(description=_("Django user"), ordering="user__username")
    def django_user(self, obj: ExternalUser) -> str:
        if obj.user_id is None:
            return "-"
        meta = obj.user._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.user_id])
        return format_html('<a href="{}">{}</a>', url, obj.user.get_username())


@admin.register(ExternalMembership)
class ExternalMembershipAdmin(ReadOnlyAdmin):
    list_display = ("user", "department", "is_leader", "is_main", "order")
    list_filter = ("is_leader", "is_main", "department__source")
    search_fields = ("user__userid", "user__name", "department__name")
    list_select_related = ("user", "department")


# -- callback inbox --------------------------------------------------------------------------------------


@admin.register(CallbackEvent)
class CallbackEventAdmin(RunSyncPermissionMixin, ReadOnlyAdmin):
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
        from .events import reprocess_events

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


# WeCom tags, and the "Send a WeCom message" action on Django users and WeCom users.
from . import admin_messages, admin_tags  # noqa: E402, F401

admin_messages.install()
