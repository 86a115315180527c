"""Shared fixtures. Services (PostgreSQL, Redis) are probed once; tests that need them skip with a reason
on a machine without them, and fail instead of skipping when CI is set."""

from __future__ import annotations

import os
import socket

import pytest

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or fail under CI) when a service is not reachable."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}, and CI is set: integration tests must run.")
    pytest.skip(f"{message}; start it to run this test.")


@pytest.fixture
def redis_url() -> str:
    from urllib.parse import urlparse

    parsed = urlparse(REDIS_URL)
    require_service("Redis", parsed.hostname or "127.0.0.1", parsed.port or 6379)
    return REDIS_URL


@pytest.fixture
def require_postgres(settings) -> None:  # noqa: ANN001
    from django.db import connection

    if connection.vendor != "postgresql":
        if os.environ.get("CI") and os.environ.get("WECOM_TEST_DB") != "sqlite":
            pytest.fail("This test needs PostgreSQL and CI is set: run with DATABASE_URL.")
        pytest.skip("Needs PostgreSQL: set DATABASE_URL=postgres://postgres@127.0.0.1:5432/wecom_sync")
