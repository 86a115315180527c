"""Admin of sync sources: Sync now, Dry run and Test connection, as actions and as object tools."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from .. import services
from ..diagnostics import probe_source
from ..forms import SECRET_FIELDS, SyncSourceForm, mask
from ..models import SECRETS_UNREADABLE_MESSAGE, SyncRun, SyncSource
from .base import RequestInContextMixin, RunSyncPermissionMixin, can_run_sync, current_request, log_action
from .display import badge, not_started_message, started_message, summarize_counters

#: Fields never shown on the read-only view of a source: its secrets (masked in "stored secrets") and their
#: "clear" boxes.
HIDDEN_WHEN_READ_ONLY = frozenset(SECRET_FIELDS) | {f"clear_{name}" for name in SECRET_FIELDS}


def source_fieldsets(editing: bool) -> list[tuple[Any, dict[str, Any]]]:
    """Return the fieldsets of the source form; an existing source adds the "clear" boxes and its status."""
    credentials = ["agent_id", "secret", "contact_sync_secret"]
    callback = ["callback_url", "token", "encoding_aes_key"]
    if editing:
        credentials.append("clear_contact_sync_secret")
        callback += ["clear_token", "clear_encoding_aes_key"]
    fieldsets: list[tuple[Any, dict[str, Any]]] = [
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
    if editing:
        fieldsets.append((_("Status"), {"fields": ["recent_runs", "secrets_status", "last_synced_at"]}))
    return fieldsets


@admin.register(SyncSource)
class SyncSourceAdmin(RequestInContextMixin, RunSyncPermissionMixin, admin.ModelAdmin):
    """Sources, with Sync now / Dry run / Test connection as list actions and as POST-only object tools."""

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
        fieldsets = source_fieldsets(editing=obj is not None)
        if obj is not None and not self.has_change_permission(request, obj):
            # Read-only view: the secrets appear only masked, in "stored secrets"; never as fields.
            fieldsets = [(title, {**opts, "fields": [f for f in opts["fields"] if f not in HIDDEN_WHEN_READ_ONLY]})
                         for title, opts in fieldsets]
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple:
        return self.readonly_fields

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
        url = obj.get_callback_url(current_request())  # absolute when known
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
        runs = []
        for source in queryset:
            if not source.enabled:
                continue
            runs.append(services.enqueue_full_sync(source, dry_run=dry_run, trigger="manual", requested_by=user))
        return runs

    def _log_started(self, request: HttpRequest, runs: list[SyncRun]) -> None:
        for run in runs:
            log_action(request, run.source, started_message(run))

    def _report_started(self, request: HttpRequest, runs: list[SyncRun], skipped: int) -> None:
        failed = [run for run in runs if run.status == SyncRun.Status.FAILED]
        for run in failed:  # not sent to any worker: say why now, never "Queued"
            self.message_user(request, not_started_message(run), messages.ERROR)
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
