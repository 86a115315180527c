"""Re-exports of the snapshot types, now in :mod:`wecom_sync.sync.snapshot`."""

# transitional: the inbox/admin move imports from here; removed after the merge
from .sync.snapshot import RemoteDepartment, RemoteUser, normalize_userid

__all__ = ["RemoteDepartment", "RemoteUser", "normalize_userid"]
