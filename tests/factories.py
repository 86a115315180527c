"""Factories for test rows (plain functions, no fixture files)."""

from __future__ import annotations

import itertools
from typing import Any

from wecom_sync.models import SyncSource

_seq = itertools.count(1)

APP_SECRET = "app-secret-Zx81Qk2mN7pLr4Tv9WbYc3"
CONTACT_SECRET = "contact-secret-Hq5Jd8Ke2Lf6Mg0Nz4"
TOKEN = "Tk7fG2hJ9kL4mN6pQ8rS1tU3vW5xY0zA"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def make_source(**overrides: Any) -> SyncSource:
    """Create and return a saved SyncSource with realistic, distinct values."""
    n = next(_seq)
    values: dict[str, Any] = {
        "name": f"Acme {n}",
        "slug": f"acme-{n}",
        "corp_id": f"ww{n:016x}",
        "agent_id": 1000002,
        "secret": APP_SECRET,
        "contact_sync_secret": CONTACT_SECRET,
        "token": TOKEN,
        "encoding_aes_key": AES_KEY,
    }
    values.update(overrides)
    return SyncSource.objects.create(**values)


def make_user(username: str, *codenames: str, **fields: Any) -> Any:
    """Create and return a Django user holding the given ``wecom_sync`` permissions (by codename)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(username, password="pw", **fields)
    perms = Permission.objects.filter(content_type__app_label="wecom_sync", codename__in=codenames)
    assert perms.count() == len(set(codenames)), f"unknown permission among {codenames}"
    user.user_permissions.set(perms)
    return user
