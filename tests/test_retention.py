"""Retention: old applied/ignored events and old runs' change rows are purged in batches; the rest is kept."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.test import override_settings
from django.utils import timezone

from tests.factories import make_source
from wecom_sync import tasks
from wecom_sync.models import CallbackEvent, SyncRun, SyncRunChange

pytestmark = pytest.mark.django_db


def _event(source, key: str, status: str, days_old: int) -> CallbackEvent:
    event = CallbackEvent.objects.create(source=source, dedupe_key=key, status=status, change_type="update_user")
    CallbackEvent.objects.filter(pk=event.pk).update(received_at=timezone.now() - timedelta(days=days_old))
    return event


def _run(source, status: str, days_old: int, changes: int = 3) -> SyncRun:
    finished = timezone.now() - timedelta(days=days_old) if status in SyncRun.FINISHED else None
    run = SyncRun.objects.create(source=source, status=status, finished_at=finished,
                                 counters={"users_created": changes})
    SyncRunChange.objects.bulk_create(
        SyncRunChange(run=run, object_type="user", external_id=f"u{i}", action="created") for i in range(changes)
    )
    return run


def test_purge_keeps_what_matters_and_deletes_the_rest_in_batches():
    source = make_source()
    old_applied = [_event(source, f"a{i}", "applied", 40) for i in range(5)]
    old_ignored = _event(source, "i", "ignored", 31)
    old_failed = _event(source, "f", "failed", 400)
    old_pending = _event(source, "p", "pending", 400)
    recent = _event(source, "r", "applied", 5)
    old_run = _run(source, "succeeded", 200, changes=5)
    old_failed_run = _run(source, "failed", 181)
    recent_run = _run(source, "partial", 10)
    held = _run(source, "held", 0)
    SyncRun.objects.filter(pk=held.pk).update(created_at=timezone.now() - timedelta(days=400))

    with override_settings(WECOM_SYNC={**django_settings.WECOM_SYNC, "BATCH_SIZE": 2}):
        result = tasks.purge_old_records()

    assert result == {"events": 6, "run_changes": 8}
    remaining = set(CallbackEvent.objects.values_list("pk", flat=True))
    assert remaining == {old_failed.pk, old_pending.pk, recent.pk}
    assert not any(e.pk in remaining for e in [*old_applied, old_ignored])
    assert not old_run.changes.exists() and not old_failed_run.changes.exists()
    assert recent_run.changes.count() == 3 and held.changes.count() == 3
    old_run.refresh_from_db()
    assert old_run.counters == {"users_created": 5}  # the run keeps its counters


def test_retention_settings_move_the_cutoff():
    source = make_source()
    _event(source, "a", "applied", 10)
    _run(source, "succeeded", 20)
    with override_settings(WECOM_SYNC={**django_settings.WECOM_SYNC, "EVENT_RETENTION_DAYS": 7,
                                       "RUN_CHANGES_RETENTION_DAYS": 14}):
        assert tasks.purge_old_records() == {"events": 1, "run_changes": 3}
    assert tasks.purge_old_records() == {"events": 0, "run_changes": 0}
