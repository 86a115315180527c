"""Django admin of wecom_sync."""

from __future__ import annotations

import contextvars
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from .forms import SyncSourceForm, mask
from .models import (
    CallbackEvent,
    ExternalDepartment,
    ExternalMembership,
    ExternalUser,
    SyncRun,
    SyncRunChange,
    SyncSource,
)

_current_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar(
    "wecom_sync_admin_request", default=None
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """An admin that lists and shows rows written by the sync, never edits them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(SyncSource)
class SyncSourceAdmin(admin.ModelAdmin):
    form = SyncSourceForm
    list_display = ("name", "slug", "corp_id", "enabled", "fetch_strategy", "last_synced_at")
    list_filter = ("enabled",)
    search_fields = ("name", "slug", "corp_id")
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("callback_url", "secrets_status", "last_synced_at")

    def get_fieldsets(self, request: HttpRequest, obj: SyncSource | None = None) -> list:
        credentials = ["agent_id", "secret", "contact_sync_secret"]
        callback = ["callback_url", "token", "encoding_aes_key"]
        if obj is not None:
            credentials.append("clear_contact_sync_secret")
            callback += ["clear_token", "clear_encoding_aes_key"]
        return [
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
            (_("Status"), {"fields": ["secrets_status", "last_synced_at"], "classes": ["collapse"]}),
        ]

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        token = _current_request.set(request)
        try:
            response = super().changeform_view(request, *args, **kwargs)
            # Render while the request is known, so the callback URL can be absolute.
            if hasattr(response, "render") and not getattr(response, "is_rendered", True):
                response.render()
            return response
        finally:
            _current_request.reset(token)

    @admin.display(description=_("callback URL"))
    def callback_url(self, obj: SyncSource | None) -> str:
        if obj is None or not obj.pk:
            return _("Save the source first; the URL uses its slug.")
        url = obj.get_callback_url(_current_request.get())
        return format_html(
            '<code id="wecom-callback-url">{}</code> '
            '<button type="button" class="button" data-wecom-copy="wecom-callback-url">{}</button>',
            url, _("Copy"),
        )

    @admin.display(description=_("stored secrets"))
    def secrets_status(self, obj: SyncSource | None) -> str:
        if obj is None:
            return "-"
        return format_html(
            "Secret: {} · {}: {} · Token: {} · EncodingAESKey: {}",
            mask(obj.secret), _("contact-sync secret"), mask(obj.contact_sync_secret),
            mask(obj.token), mask(obj.encoding_aes_key),
        )


@admin.register(ExternalDepartment)
class ExternalDepartmentAdmin(ReadOnlyAdmin):
    list_display = ("name", "department_id", "source", "parent", "order", "is_removed")
    list_filter = ("source", "is_removed")
    search_fields = ("name", "name_en", "department_id")
    list_select_related = ("source", "parent")
    exclude = ("raw",)


@admin.register(ExternalUser)
class ExternalUserAdmin(ReadOnlyAdmin):
    list_display = ("userid", "name", "source", "status", "user", "is_removed")
    list_filter = ("source", "status", "is_removed")
    search_fields = ("userid", "name")
    list_select_related = ("source", "user")
    exclude = ("raw",)


@admin.register(ExternalMembership)
class ExternalMembershipAdmin(ReadOnlyAdmin):
    list_display = ("user", "department", "is_leader", "is_main", "order")
    list_filter = ("is_leader", "is_main", "department__source")
    search_fields = ("user__userid", "user__name", "department__name")
    list_select_related = ("user", "department")


class SyncRunChangeInline(admin.TabularInline):
    model = SyncRunChange
    fields = ("object_type", "external_id", "display_name", "action", "fields", "error", "applied")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    max_num = 0


@admin.register(SyncRun)
class SyncRunAdmin(ReadOnlyAdmin):
    list_display = ("__str__", "source", "kind", "trigger", "status", "created_at", "finished_at")
    list_filter = ("source", "status", "kind", "trigger")
    list_select_related = ("source",)
    inlines = [SyncRunChangeInline]


@admin.register(SyncRunChange)
class SyncRunChangeAdmin(ReadOnlyAdmin):
    list_display = ("run", "object_type", "external_id", "display_name", "action", "applied")
    list_filter = ("action", "object_type", "applied")
    search_fields = ("external_id", "display_name")
    list_select_related = ("run",)


@admin.register(CallbackEvent)
class CallbackEventAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "source", "change_type", "object_id", "status", "attempts")
    list_filter = ("source", "status", "change_type")
    search_fields = ("object_id", "dedupe_key")
    list_select_related = ("source",)
