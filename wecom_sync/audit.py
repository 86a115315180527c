"""The admin history (``LogEntry``) of what people do to wecom_sync objects, whatever the entry point.

The admin, the REST API and any other entry point record an operation (approve, reject, reprocess, start a
sync, link by hand) the same way: one CHANGE entry on the object, with the acting user, shown in the object's
admin History. Needs no request, so it can be called from anywhere a user is known.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps


def record_action(user: Any, obj: Any, message: str) -> None:
    """Record an operation on ``obj`` by ``user`` in the admin history; nothing for an anonymous user."""
    if user is None or not getattr(user, "pk", None) or not apps.is_installed("django.contrib.admin"):
        return
    from django.contrib.admin.models import CHANGE, LogEntry
    from django.contrib.contenttypes.models import ContentType

    if hasattr(LogEntry.objects, "log_actions"):  # Django 5.1+
        LogEntry.objects.log_actions(user.pk, [obj], CHANGE, change_message=message, single_object=True)
    else:
        content_type = ContentType.objects.get_for_model(type(obj))
        LogEntry.objects.log_action(  # type: ignore[attr-defined]  # Django < 5.1, removed from the stubs
            user_id=user.pk, content_type_id=content_type.pk, object_id=obj.pk, object_repr=str(obj)[:200],
            action_flag=CHANGE, change_message=message,
        )
