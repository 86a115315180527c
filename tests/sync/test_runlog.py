"""The run log (wecom_sync.sync.runlog): one spelling per counter, a label for each, one way to finish a run."""

from __future__ import annotations

from tests.factories import make_snapshot, remote_department, remote_member
from wecom_sync import services
from wecom_sync.models import SyncRun, SyncRunChange
from wecom_sync.sync import objects
from wecom_sync.sync.runlog import COUNTER_LABELS, count_failures, counter_key, finish_run

ROOT = remote_department(1, parent=0, name="Root")


def test_counter_keys_and_failures():
    assert counter_key(SyncRunChange.ObjectType.USER, SyncRunChange.Action.CREATED) == "users_created"
    assert counter_key(SyncRunChange.ObjectType.DEPARTMENT, SyncRunChange.Action.MOVED) == "departments_moved"
    assert counter_key(SyncRunChange.ObjectType.TAG, SyncRunChange.Action.FAILED) == "tags_failed"
    assert count_failures({"users_failed": 2, "departments_failed": 1, "tags_failed": 4, "users_created": 9}) == 7


def test_every_counter_a_sync_and_an_event_write_has_a_label(source, fake_fetch):
    fake_fetch["snapshot"] = make_snapshot([ROOT, remote_department(2)], [remote_member("a"), remote_member("b", (2,))])
    first = services.run_full_sync(source)
    fake_fetch["snapshot"] = make_snapshot(
        [ROOT], [remote_member("a", name="A Changed"), remote_member("c"), remote_member("d", status=2)]
    )
    second = services.run_full_sync(source)
    run = SyncRun.objects.create(source=source, kind=SyncRun.Kind.EVENTS, status=SyncRun.Status.RUNNING)
    counters = objects.remove_users(source, run, ["c"])
    keys = set(first.counters) | set(second.counters) | set(counters)
    assert {"users_created", "users_updated", "departments_removed", "users_deactivated"} <= keys
    assert keys <= set(COUNTER_LABELS), keys - set(COUNTER_LABELS)


def test_finish_run_appends_the_message_and_stamps_the_end(source):
    run = SyncRun.objects.create(source=source, status=SyncRun.Status.RUNNING, message="fetched")
    finish_run(run, SyncRun.Status.PARTIAL, "2 objects failed")
    run.refresh_from_db()
    assert run.status == SyncRun.Status.PARTIAL
    assert run.message == "fetched\n2 objects failed"
    assert run.finished_at is not None and run.heartbeat_at == run.finished_at
