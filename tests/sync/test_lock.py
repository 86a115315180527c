"""The per-source lock (wecom_sync.sync.lock)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from wecom_sync.models import (
    SyncRun,
)
from wecom_sync.sync import lock


def test_lock_semantics(source):
    a = SyncRun.objects.create(source=source, status=SyncRun.Status.RUNNING, started_at=timezone.now(),
                               heartbeat_at=timezone.now())
    b = SyncRun.objects.create(source=source, status=SyncRun.Status.RUNNING, started_at=timezone.now())
    assert lock.acquire(source, a)
    assert not lock.acquire(source, a)  # not re-entrant: a duplicate task of the running run must not run too
    assert not lock.acquire(source, b)
    lock.release(source, b)  # not the holder: no effect
    assert lock.holder(source) == a.pk
    lock.release(source, a)
    assert lock.acquire(source, b)
    b.status = SyncRun.Status.SUCCEEDED  # a finished holder never blocks
    b.save()
    assert lock.acquire(source, a)
    SyncRun.objects.filter(pk=a.pk).update(heartbeat_at=timezone.now() - timedelta(days=1))
    assert lock.acquire(source, b)
    a.refresh_from_db()
    assert a.status == SyncRun.Status.FAILED


def test_a_holder_that_has_not_saved_running_yet_keeps_the_lock(source):
    """Between taking the lock and saving "running", the winner is still "queued": the loser must wait."""
    winner = SyncRun.objects.create(source=source, status=SyncRun.Status.QUEUED)
    loser = SyncRun.objects.create(source=source, status=SyncRun.Status.QUEUED)
    assert lock.acquire(source, winner)
    assert not lock.acquire(source, loser)
    winner.refresh_from_db()
    assert winner.status == SyncRun.Status.QUEUED
    held = SyncRun.objects.create(source=source, status=SyncRun.Status.HELD, heartbeat_at=timezone.now())
    lock.release(source, winner)
    assert lock.acquire(source, held)  # approving a held run
    assert not lock.acquire(source, loser)


