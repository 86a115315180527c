"""The admin action "Send a WeCom message" on Django users and on WeCom users.

The action shows a form (source, type, content); on submit it hands the message to the ``send_message``
Celery task and reports at once who cannot be reached (Django users without a WeCom account in that source).
It is added to the admin of ``AUTH_USER_MODEL`` (whichever ModelAdmin the site registered for it) and to the
WeCom users admin by ``install()``, without touching those classes; a site whose user admin is registered
later can add ``send_wecom_message`` to its ``actions`` itself. Only users with the ``send_message``
permission of wecom_sync see the action.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from ..forms import SendMessageForm
from ..messages import resolve_users
from ..models import ExternalUser, SyncSource
from ..tasks import send_message

SEND_MESSAGE_PERMISSION = "wecom_sync.send_message"


def can_send_message(request: HttpRequest) -> bool:
    """Whether the user may send WeCom app messages from the admin."""
    return bool(request.user.is_active and request.user.has_perm(SEND_MESSAGE_PERMISSION))


def queue_message(source: SyncSource, recipients: QuerySet | list, content: dict[str, Any]) -> dict[str, Any]:
    """Hand a message to the background task; return {"queued", "unmapped", "skipped"} for the report.

    ``recipients`` are Django users or ``ExternalUser`` rows; WeCom users of another source are skipped.
    """
    rows = list(recipients)
    user_ids: list[int] = []
    userids: list[str] = []
    skipped: list[Any] = []
    unmapped: list[Any] = []
    if rows and isinstance(rows[0], ExternalUser):
        for ext in rows:
            if ext.source_id == source.pk and not ext.is_removed:
                userids.append(ext.userid)
            else:
                skipped.append(ext)
    else:
        _userids, unmapped = resolve_users(source, rows)
        gone = {u.pk for u in unmapped}
        user_ids = [u.pk for u in rows if u.pk not in gone]
    if user_ids or userids:
        send_message.delay(source.pk, user_ids=user_ids, userids=userids, **content)
    return {"queued": len(user_ids) + len(userids), "unmapped": unmapped, "skipped": skipped}


@admin.action(description=gettext_lazy("Send a WeCom message"), permissions=["send_wecom_message"])
def send_wecom_message(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> Any:
    """Show the message form for the selected users; on submit, queue the message and report."""
    if "apply" in request.POST:
        form = SendMessageForm(request.POST)
        if form.is_valid():
            report = queue_message(form.cleaned_data["source"], queryset, form.message_content())
            _report(modeladmin, request, report)
            return None
    else:
        form = SendMessageForm(initial={"source": SyncSource.objects.filter(enabled=True).first()})
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": _("Send a WeCom message"),
        "opts": modeladmin.model._meta,
        "form": form,
        "queryset": queryset,
        "count": queryset.count(),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "action": "send_wecom_message",
    }
    return TemplateResponse(request, "admin/wecom_sync/send_message.html", context)


def _report(modeladmin: admin.ModelAdmin, request: HttpRequest, report: dict[str, Any]) -> None:
    """Tell the admin how many people the message goes to, and who was left out (an error if nobody)."""
    if report["queued"]:
        modeladmin.message_user(request, ngettext(
            "The message to %(count)d person is being sent.",
            "The message to %(count)d people is being sent.", report["queued"]) % {"count": report["queued"]},
            messages.SUCCESS)
    missing = [*report["unmapped"], *report["skipped"]]
    if missing:
        names = ", ".join(str(u) for u in missing[:20]) + (" …" if len(missing) > 20 else "")
        modeladmin.message_user(request, ngettext(
            "%(count)d selected person has no WeCom account in this source and was left out: %(names)s",
            "%(count)d selected people have no WeCom account in this source and were left out: %(names)s",
            len(missing)) % {"count": len(missing), "names": names},
            messages.WARNING if report["queued"] else messages.ERROR)


def _add_action(model: Any) -> bool:
    model_admin = admin.site._registry.get(model)
    if model_admin is None:
        return False
    actions = list(model_admin.actions or ())
    if send_wecom_message not in actions and "send_wecom_message" not in actions:
        model_admin.actions = [*actions, send_wecom_message]
    # The action's permission check (``permissions=["send_wecom_message"]``) asks the ModelAdmin.
    model_admin.has_send_wecom_message_permission = can_send_message  # type: ignore[attr-defined]
    return True


def install() -> None:
    """Add the action to the registered admins of the user model and of WeCom users (idempotent)."""
    _add_action(get_user_model())
    _add_action(ExternalUser)
