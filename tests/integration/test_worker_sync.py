"""Full syncs through a real Celery worker (Redis broker, PostgreSQL): a 20k-user directory, two syncs of one
source at once, and the token herd of eight worker processes."""

from __future__ import annotations

import pytest

from tests.integration.conftest import directory_diff, finished, sim_source, wait_until
from wecom_sync import tasks
from wecom_sync.models import CallbackEvent, ExternalUser, SyncRun, SyncSource
from wecom_sync.services import enqueue_full_sync
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.postgres, pytest.mark.redis]


def test_full_sync_of_20k_users_through_the_worker_equals_the_simulator(start_worker):
    org = generate_organisation(users=20_000, departments=400, seed=20)
    with WeComSimulator(org) as sim:
        source = sim_source(sim)
        worker = start_worker()
        run = SyncRun.objects.create(source=source, status=SyncRun.Status.QUEUED)
        result = tasks.full_sync.delay(source.pk, run_id=run.pk)
        run = wait_until(lambda: finished(run.pk), 240, 0.5,
                         f"the 20k sync did not finish in 240 s:\n{worker.log_tail()}")
        assert run.status == SyncRun.Status.SUCCEEDED, run.message
        assert run.task_id == result.id  # the worker, not this process, ran it
        assert run.counters["users_created"] == 20_000
        assert run.snapshot_complete is True
        assert directory_diff(source, sim) == []

        # A second run through the worker is a no-op on an unchanged directory.
        run2 = SyncRun.objects.create(source=source, status=SyncRun.Status.QUEUED)
        tasks.full_sync.delay(source.pk, run_id=run2.pk)
        run2 = wait_until(lambda: finished(run2.pk), 120, 0.5, worker.log_tail())
        assert run2.status == SyncRun.Status.SUCCEEDED, run2.message
        assert run2.counters["users_unchanged"] == 20_000
        assert not run2.changes.exists()


def test_two_full_syncs_of_one_source_on_two_worker_processes_one_runs_one_is_refused(start_worker):
    with WeComSimulator(generate_organisation(users=300, departments=12, seed=5)) as sim:
        source = sim_source(sim)
        start_worker(concurrency=2, pool="prefork")
        # The fetch takes a few seconds, so both tasks are in flight at the same time.
        sim.faults.delay(0.5, path="user/list")
        runs = [enqueue_full_sync(source), enqueue_full_sync(source)]
        done = [wait_until(lambda pk=r.pk: finished(pk), 120, 0.2) for r in runs]
        statuses = sorted(r.status for r in done)
        assert statuses == [SyncRun.Status.CANCELLED, SyncRun.Status.SUCCEEDED], [r.message for r in done]
        winner = next(r for r in done if r.status == SyncRun.Status.SUCCEEDED)
        loser = next(r for r in done if r.status == SyncRun.Status.CANCELLED)
        assert f"#{winner.pk}" in loser.message
        assert loser.started_at is None and not loser.changes.exists()
        # Both ran in worker processes, at the same time: the refused one finished while the other ran.
        assert winner.task_id and loser.task_id and winner.task_id != loser.task_id
        assert winner.started_at <= loser.finished_at <= winner.finished_at
        assert ExternalUser.objects.filter(source=source).count() == 300
        assert SyncSource.objects.get(pk=source.pk).lock_run_id is None
        sim.faults.clear()
        assert directory_diff(source, sim) == []


def test_token_herd_eight_worker_processes_make_one_gettoken_call(start_worker):
    """Eight prefork children, an empty shared Redis token cache, eight tasks at once: one gettoken."""
    from wecom_sync import events
    from wecom_sync.callbacks import parse_event, store_event

    with WeComSimulator(generate_organisation(users=16, departments=3, seed=8)) as sim:
        # Eight sources of one corp and secret (so one token), each with one pending event: events of
        # different sources are processed in parallel (one source's events are serialised).
        userids = sorted(sim.org.users)[:8]
        pending = []
        for i, userid in enumerate(userids):
            source = sim_source(sim, slug=f"herd-{i}")
            xml = sim.update_user(userid, name=f"herd {i}", deliver=False)
            pending.append(store_event(source, parse_event(xml))[0].pk)
        start_worker(concurrency=8, pool="prefork")
        sim.reset_calls()
        sim.faults.delay(0.5, path="gettoken")  # the first fetch is slow: the others must wait for it
        sim.faults.delay(1.0, path="user/get")  # one second per event: overlap is visible in wall time
        for pk in pending:
            events.enqueue_event(pk)
        wait_until(lambda: not CallbackEvent.objects.filter(pk__in=pending, status="pending").exists(), 60, 0.1)
        statuses = set(CallbackEvent.objects.filter(pk__in=pending).values_list("status", flat=True))
        assert statuses == {"applied"}, list(CallbackEvent.objects.values_list("last_error", flat=True))
        assert sim.calls["/cgi-bin/user/get"] == 8
        assert sim.calls["/cgi-bin/gettoken"] == 1
        # The one-second user/get calls overlapped: the tasks really ran side by side.
        assert sim.peak_in_flight["/cgi-bin/user/get"] >= 2, sim.peak_in_flight
        for i, userid in enumerate(userids):
            assert ExternalUser.objects.get(source__slug=f"herd-{i}", userid_key=userid.lower()).name == f"herd {i}"
