"""Who may do what through the API: the admin's model permissions, per view action."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

VIEW_SOURCE = "wecom_sync.view_syncsource"
VIEW_RUN = "wecom_sync.view_syncrun"
VIEW_EVENT = "wecom_sync.view_callbackevent"
#: The custom permission of SyncSource.Meta: start syncs, approve or reject held runs, reprocess events.
RUN_SYNC = "wecom_sync.run_sync"


class HasActionPermissions(BasePermission):
    """Allow an active, authenticated user who holds every permission the view names for its action.

    A view declares ``required_permissions``: a dict from action name (``list``, ``retrieve``, ``sync``,
    ...; ``"default"`` for the rest) to a tuple of permission names. An action with no entry is refused. A
    method the view set does not route (``PUT``, ``DELETE``) needs only a signed-in user, so that it is
    answered 405, not 403.
    """

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active):
            return False
        if isinstance(getattr(view, "action_map", None), dict) and view.action is None:
            return True
        perms = required_permissions(view, request)
        return perms is not None and user.has_perms(perms)


def required_permissions(view: Any, request: Request) -> tuple[str, ...] | None:
    """The permissions ``view`` needs for its current action, or None when the action is not listed."""
    table: dict[str, tuple[str, ...]] = getattr(view, "required_permissions", {})
    action = getattr(view, "action", None) or (request.method or "").lower()
    if action == "metadata":  # OPTIONS describes the endpoint: whoever may read it may ask
        action = "list" if "list" in table else "retrieve"
    if action in table:
        return table[action]
    return table.get("default")
