"""Read-only admin of the mirrored directory: departments (and their tree), users, memberships, tags."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from .. import services
from ..models import ExternalDepartment, ExternalMembership, ExternalTag, ExternalUser
from .base import ReadOnlyAdmin, RequestInContextMixin, current_request, log_action, object_or_404
from .display import department_trees


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
        return TemplateResponse(request, "admin/wecom_sync/externaldepartment/tree.html", {
            **self.admin_site.each_context(request),
            "title": gettext("Department tree"),
            "sources": department_trees(),
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
class ExternalUserAdmin(RequestInContextMixin, ReadOnlyAdmin):
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
        request = current_request()
        if obj.pk is None or request is None or not self.can_link_by_hand(request):
            return "-"
        url = reverse("admin:wecom_sync_externaluser_link", args=[obj.pk])
        return format_html('<a class="button" href="{}">{}</a>', url, gettext("Link to an account by hand"))

    def get_urls(self) -> list:
        return [
            path("<path:object_id>/link/", self.admin_site.admin_view(self.link_view),
                 name="wecom_sync_externaluser_link"),
        ] + super().get_urls()

    def link_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Link a member to an existing account chosen by login name, and record it in the history."""
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
        user = obj.user
        if user is None:
            return "-"
        meta = user._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[user.pk])
        return format_html('<a href="{}">{}</a>', url, user.get_username())


@admin.register(ExternalMembership)
class ExternalMembershipAdmin(ReadOnlyAdmin):
    list_display = ("user", "department", "is_leader", "is_main", "order")
    list_filter = ("is_leader", "is_main", "department__source")
    search_fields = ("user__userid", "user__name", "department__name")
    list_select_related = ("user", "department")



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
        group = obj.group
        if group is None:
            return "-"
        try:
            url = reverse("admin:auth_group_change", args=[group.pk])
        except NoReverseMatch:  # the site does not register the Group admin
            return group.name
        return format_html('<a href="{}">{}</a>', url, group.name)
