"""Re-exports of the event-facing entry points, now in :mod:`wecom_sync.sync.objects`."""

# transitional: the inbox/admin move imports from here; removed after the merge
from .objects import apply_remote_objects, remove_departments, remove_users, rename_user

__all__ = ["apply_remote_objects", "remove_departments", "remove_users", "rename_user"]
