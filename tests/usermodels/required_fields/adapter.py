"""The adapter a project with extra required user fields writes."""

from __future__ import annotations

import zlib
from typing import Any

from wecom_sync.adapter import DefaultWeComAdapter


class RequiredFieldsAdapter(DefaultWeComAdapter):
    """Fills ``employee_number`` and ``badge`` of every new account from the WeCom member."""

    def new_user(self, source: Any, remote: Any) -> Any:
        """A new account with its required fields set."""
        user = super().new_user(source, remote)
        user.employee_number = zlib.crc32(f"{source.corp_id}:{remote.key}".encode()) % 2_000_000_000
        user.badge = f"WC-{remote.key}"[:40]
        return user
