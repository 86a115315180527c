"""Admin of WeCom tags (标签): read-only, like every mirror of the directory."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from .admin import ReadOnlyAdmin
from .models import ExternalTag


@admin.register(ExternalTag)
class ExternalTagAdmin(ReadOnlyAdmin):
    list_display = ("tag_id", "name", "source", "member_count", "department_count", "mirrored_group", "is_removed",
                    "updated_at")
    list_filter = ("source", "is_removed")
    search_fields = ("name", "=tag_id")
    list_select_related = ("source", "group")
    exclude = ("raw", "synced_members")
    readonly_fields = ("mirrored_group",)
    filter_horizontal = ()

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(
            _members=Count("users", distinct=True), _departments=Count("departments", distinct=True))

    @admin.display(description=_("members"), ordering="_members")
    def member_count(self, obj: ExternalTag) -> int:
        return obj._members  # type: ignore[attr-defined]

    @admin.display(description=_("departments"), ordering="_departments")
    def department_count(self, obj: ExternalTag) -> int:
        return obj._departments  # type: ignore[attr-defined]

    @admin.display(description=_("mirrored group"))
    def mirrored_group(self, obj: ExternalTag) -> str:
        if obj.group_id is None:
            return "-"
        try:
            url = reverse("admin:auth_group_change", args=[obj.group_id])
        except NoReverseMatch:  # the site does not register the Group admin
            return obj.group.name
        return format_html('<a href="{}">{}</a>', url, obj.group.name)
