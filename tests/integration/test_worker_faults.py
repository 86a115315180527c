"""Things breaking under a real Celery worker: the worker SIGKILLed mid-sync, the broker stopped while callbacks
arrive, and WeCom misbehaving during a sync (token revoked, 45009 bursts, 5xx, slow answers)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from django.contrib.auth import get_user_model
from django.utils import timezone

from tests.factories import AES_KEY, TOKEN
from tests.integration.conftest import directory_diff, finished, sim_source, wait_until
from wecom_sync import events, services, tasks
from wecom_sync.models import CallbackEvent, ExternalMembership, ExternalUser, SyncRun, SyncSource
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.postgres, pytest.mark.redis]

User = get_user_model()


def run_in_worker(source: SyncSource, timeout: float = 120, worker=None) -> SyncRun:  # noqa: ANN001
    """Send tasks.full_sync for a new queued run and wait for the worker to finish it."""
    run = SyncRun.objects.create(source=source, status=SyncRun.Status.QUEUED)
    tasks.full_sync.delay(source.pk, run_id=run.pk)
    return wait_until(lambda: finished(run.pk), timeout, 0.2,
                      f"run #{run.pk} did not finish:\n{worker.log_tail() if worker else ''}")


def active_userids(source: SyncSource) -> set[str]:
    """userid keys of mirrored members whose Django account is active."""
    return set(ExternalUser.objects.filter(source=source, user__is_active=True).values_list("userid_key", flat=True))


# -- worker killed mid-sync ------------------------------------------------------------------------------


def test_worker_killed_mid_sync_is_closed_as_failed_and_the_next_run_converges(start_worker):
    with WeComSimulator(generate_organisation(users=6000, departments=120, seed=11)) as sim:
        source = sim_source(sim)
        # Small batches: the apply is many short transactions, so the kill lands between or inside them.
        worker = start_worker(wecom={"BATCH_SIZE": 100})
        run = SyncRun.objects.create(source=source, status=SyncRun.Status.QUEUED)
        tasks.full_sync.delay(source.pk, run_id=run.pk)
        wait_until(lambda: ExternalUser.objects.filter(source=source).exists(), 120, 0.02,
                   f"the apply never started:\n{worker.log_tail()}")
        worker.kill()  # SIGKILL in the middle of the apply: no finally, no lock release
        applied = ExternalUser.objects.filter(source=source).count()
        assert 0 < applied < 6000, applied
        run.refresh_from_db()
        assert run.status == SyncRun.Status.RUNNING
        assert SyncSource.objects.get(pk=source.pk).lock_run_id == run.pk

        # The periodic stale-run task (sent as beat would, run by a new worker whose STALE_RUN_SECONDS is 2)
        # closes it once its heartbeat is older than that.
        worker2 = start_worker(wecom={"STALE_RUN_SECONDS": 2})

        def closed() -> bool:
            if SyncRun.objects.get(pk=run.pk).status != SyncRun.Status.RUNNING:
                return True
            tasks.close_stale_runs.delay()
            return False

        wait_until(closed, 30, 1.0, f"the stale-run task never closed the dead run:\n{worker2.log_tail()}")
        run.refresh_from_db()
        assert run.status == SyncRun.Status.FAILED
        assert "heartbeat" in run.message
        assert SyncSource.objects.get(pk=source.pk).lock_run_id is None

        # Nothing half-applied: each mirrored member has its Django account and all its memberships (a
        # batch is one transaction), and no Django account exists without its mirror.
        present = set(ExternalUser.objects.filter(source=source).values_list("userid_key", flat=True))
        problems = [p for p in directory_diff(source, sim, limit=10_000) if not p.startswith("users differ")]
        assert problems == []
        assert User.objects.count() == len(present)
        assert not ExternalUser.objects.filter(source=source, user__isnull=True).exists()
        assert not ExternalMembership.objects.filter(user__user__isnull=True).exists()

        # The next run (on the new worker) converges.
        rerun = run_in_worker(source, worker=worker2)
        assert rerun.status == SyncRun.Status.SUCCEEDED, rerun.message
        assert rerun.counters["users_created"] == 6000 - len(present)
        assert directory_diff(source, sim) == []
        assert User.objects.count() == 6000


# -- broker stopped while callbacks arrive ---------------------------------------------------------------


def test_broker_stopped_callbacks_answered_and_stored_then_applied_by_the_worker(
    start_worker, broker, private_redis, live_server
):
    with WeComSimulator(generate_organisation(users=60, departments=6, seed=12)) as sim:
        source = sim_source(sim)
        assert services.run_full_sync(source).status == SyncRun.Status.SUCCEEDED
        sim.set_callback(live_server.url + source.get_callback_path(), TOKEN, AES_KEY)
        broker.point_to(private_redis.url)
        worker = start_worker(broker_url=private_redis.url)

        private_redis.stop()
        users = sorted(sim.org.users)
        xmls = [sim.update_user(u, name=f"offline {i}", deliver=False) for i, u in enumerate(users[:30])]
        xmls += [sim.set_user_status(u, 2, deliver=False) for u in users[30:40]]
        xmls += [sim.move_user(u, [1], deliver=False) for u in users[42:47]]
        xmls.append(sim.delete_user(users[40], deliver=False))
        xmls.append(sim.add_user({"userid": "OfflineNew", "name": "offline new", "department": [1]}, deliver=False))

        session = requests.Session()

        def post(xml: str) -> tuple[int, float]:
            body, params = sim.build_callback(xml)
            started = time.monotonic()
            response = session.post(live_server.url + source.get_callback_path(), params=params,
                                    data=body.encode(), headers={"Content-Type": "text/xml"}, timeout=30)
            return response.status_code, time.monotonic() - started

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, xmls))
        assert [status for status, _ in answers] == [200] * len(xmls)
        assert max(seconds for _, seconds in answers) < 5.0  # inside WeCom's 5-second window
        stored = CallbackEvent.objects.filter(source=source)
        assert stored.count() == len(xmls)
        assert set(stored.values_list("status", flat=True)) == {"pending"}

        # The broker returns; the worker reconnects; the periodic requeue hands every event to it.
        private_redis.start()
        wait_until(lambda: broker.app.control.ping(destination=[worker.nodename], timeout=0.5), 60, 0.5,
                   f"the worker did not reconnect:\n{worker.log_tail()}")
        assert events.requeue_pending_events(now=timezone.now() + timedelta(seconds=61)) == len(xmls)
        wait_until(lambda: not stored.filter(status="pending").exists(), 60, 0.2,
                   f"events still pending:\n{worker.log_tail()}")
        assert set(stored.values_list("status", flat=True)) == {"applied"}
        assert not stored.filter(run__isnull=True).exists()
        assert set(SyncRun.objects.filter(events__in=stored).values_list("kind", "status").distinct()) == {
            ("events", "succeeded")}
        assert directory_diff(source, sim) == []


# -- WeCom faults during a sync --------------------------------------------------------------------------


def test_wecom_faults_during_worker_syncs_complete_or_fail_closed(start_worker):
    with WeComSimulator(generate_organisation(users=1500, departments=40, seed=13)) as sim:
        source = sim_source(sim)
        worker = start_worker()
        first = run_in_worker(source, worker=worker)
        assert first.status == SyncRun.Status.SUCCEEDED, first.message
        everyone = active_userids(source)

        # 1. Token revoked mid-run, a 45009 burst, 502s and slow answers: retries absorb them all.
        gone = sorted(sim.org.users)[:3]
        for userid in gone:
            sim.delete_user(userid, deliver=False)
        sim.faults.delay(0.05, path="user/list")
        # (each burst is shorter than API_MAX_RETRIES, so every call gets through in the end)
        sim.faults.fail_next(45009, count=2, path="department/simplelist")
        sim.faults.http_error_next(502, count=2, path="user/list_id")
        sim.faults.fail_next(45009, count=6, path="user/list")
        sim.faults.http_error_next(503, count=3, path="user/list")

        def revoke_mid_run() -> None:
            deadline = time.monotonic() + 60
            while sim.calls["/cgi-bin/user/list"] < 8 and time.monotonic() < deadline:
                time.sleep(0.01)
            sim.faults.invalidate_tokens()

        sim.reset_calls()
        revoker = threading.Thread(target=revoke_mid_run)
        revoker.start()
        run = run_in_worker(source, worker=worker)
        revoker.join()
        # The tokens were cached before the run: the only gettoken is the replacement of the revoked one.
        assert sim.calls["/cgi-bin/gettoken"] >= 1, (dict(sim.calls), run.status, run.message)
        assert run.status == SyncRun.Status.SUCCEEDED, run.message
        assert run.snapshot_complete is True
        sim.faults.clear()
        assert directory_diff(source, sim) == []
        assert active_userids(source) == everyone - {u.lower() for u in gone}

        # 2. user/list_id keeps failing (5xx beyond the retries): the snapshot is incomplete, so the run ends
        #    partial and removes nobody, although three more members are gone.
        before = active_userids(source)
        gone2 = sorted(sim.org.users)[:3]
        for userid in gone2:
            sim.delete_user(userid, deliver=False)
        sim.faults.http_error_next(502, count=10_000, path="user/list_id")
        run = run_in_worker(source, worker=worker)
        assert run.status == SyncRun.Status.PARTIAL, run.message
        assert run.snapshot_complete is False
        assert "nothing was removed" in run.message
        assert active_userids(source) == before
        assert not run.changes.filter(action__in=["deactivated", "deleted", "removed"]).exists()

        # 3. gettoken itself keeps failing ("system busy") after the cached token is revoked: the run fails,
        #    nothing changes.
        sim.faults.clear()
        sim.faults.invalidate_tokens()
        sim.faults.fail_next(-1, count=10_000, path="gettoken")
        run = run_in_worker(source, worker=worker)
        assert run.status == SyncRun.Status.FAILED, run.message
        assert active_userids(source) == before
        assert not run.changes.exists()

        # 4. WeCom recovers: the next run converges and only now deactivates the three who left.
        sim.faults.clear()
        run = run_in_worker(source, worker=worker)
        assert run.status == SyncRun.Status.SUCCEEDED, run.message
        assert directory_diff(source, sim) == []
        assert before - active_userids(source) == {u.lower() for u in gone2 if u.lower() in before}

