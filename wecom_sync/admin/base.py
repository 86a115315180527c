"""What every wecom_sync admin shares: the run_sync permission, the admin history, read-only mirrors."""

from __future__ import annotations

import contextvars
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest

from ..audit import record_action

RUN_SYNC_PERMISSION = "wecom_sync.run_sync"

_current_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar(
    "wecom_sync_admin_request", default=None
)


def can_run_sync(request: HttpRequest) -> bool:
    """Whether the user may start, approve, retry or reprocess work."""
    return bool(request.user.is_active and request.user.has_perm(RUN_SYNC_PERMISSION))


def log_action(request: HttpRequest, obj: Any, message: str) -> None:
    """Record an admin action on ``obj`` in the admin history (LogEntry), with the acting user."""
    record_action(getattr(request, "user", None), obj, message)


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


class RequestInContextMixin:
    """Renders the change form while the request is known, so read-only fields can use it.

    Django calls a read-only field's display method with the object only; ``current_request()`` gives it
    the request (for an absolute callback URL, or a permission check) during ``changeform_view``.
    """

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        token = _current_request.set(request)
        try:
            response = super().changeform_view(request, *args, **kwargs)  # type: ignore[misc]
            if hasattr(response, "render") and not getattr(response, "is_rendered", True):
                response.render()
            return response
        finally:
            _current_request.reset(token)


def current_request() -> HttpRequest | None:
    """Return the request whose change form is being rendered, or None outside ``changeform_view``."""
    return _current_request.get()
