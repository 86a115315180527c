"""Fixtures of the sync engine's tests: a source, an events run, and a fetch that serves a hand-built snapshot."""

from __future__ import annotations

import pytest

from tests.factories import make_source
from wecom_sync.models import SyncRun
from wecom_sync.sync import runner


@pytest.fixture
def source(db):
    return make_source(removal_threshold_count=1000, removal_threshold_percent=100)


@pytest.fixture
def run(source):
    return SyncRun.objects.create(source=source, kind=SyncRun.Kind.EVENTS, status=SyncRun.Status.RUNNING)


@pytest.fixture
def fake_fetch(monkeypatch):
    """Serve a hand-built snapshot from runner.fetch (the engine's one door to WeCom)."""
    box = {}

    def fetch(source, progress=None):
        if progress:
            progress(1, 1)
        return box["snapshot"]

    monkeypatch.setattr(runner, "fetch", fetch)
    return box
