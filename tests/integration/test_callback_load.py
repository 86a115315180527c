"""500 callbacks posted concurrently over real HTTP while the worker runs a full sync of the same source.

The mix of changes is drawn from a seeded generator: WECOM_LOAD_SEED=<n> tries another mix (default 500).
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from django.contrib.auth import get_user_model
from django.db.models import Count
from django.utils import timezone

from tests.factories import AES_KEY, TOKEN
from tests.integration.conftest import directory_diff, finished, sim_source, wait_until
from wecom_sync import events, tasks
from wecom_sync.models import CallbackEvent, ExternalMembership, ExternalUser, SyncRun, SyncRunChange
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()
CALLBACKS = 500


class Mutator:
    """Random directory changes on the simulator; each returns the event XML WeCom would send."""

    def __init__(self, sim: WeComSimulator, rng: random.Random) -> None:
        self.sim = sim
        self.rng = rng
        self.hot = rng.sample(sorted(sim.org.users), 60)  # members changed again and again
        self.new_departments: list[int] = []
        self.serial = 0

    def _user(self) -> str:
        pool = [u for u in self.hot if u in self.sim.org.users] or sorted(self.sim.org.users)
        return self.rng.choice(pool)

    def _departments(self) -> list[int]:
        return self.rng.sample(sorted(self.sim.org.departments), self.rng.randint(1, 2))

    def next(self) -> str:
        self.serial += 1
        n, sim, roll = self.serial, self.sim, self.rng.random()
        if roll < 0.40:
            return sim.update_user(self._user(), name=f"name {n}", position=f"p{n}", deliver=False)
        if roll < 0.55:
            return sim.move_user(self._user(), self._departments(), deliver=False)
        if roll < 0.65:
            return sim.set_user_status(self._user(), self.rng.choice([1, 2, 5, 1]), deliver=False)
        if roll < 0.73:
            userid = f"New{n}"
            self.hot.append(userid)
            return sim.add_user({"userid": userid, "name": f"new {n}", "department": self._departments()},
                                deliver=False)
        if roll < 0.77:
            return sim.delete_user(self._user(), deliver=False)
        if roll < 0.80:
            old = self._user()
            new = f"{old}R{n}"
            self.hot[self.hot.index(old) if old in self.hot else 0] = new
            return sim.rename_userid(old, new, deliver=False)
        if roll < 0.88:
            parent = self.rng.choice(sorted(sim.org.departments))
            xml = sim.add_department({"name": f"dept {n}", "parentid": parent}, deliver=False)
            self.new_departments.append(max(sim.org.departments))
            return xml
        if roll < 0.95 or not self.new_departments:
            dept = self.rng.choice(sorted(d for d in sim.org.departments if d != 1))
            return sim.update_department(dept, name=f"renamed {n}", deliver=False)
        dept = self.new_departments.pop()
        if sim.org.children(dept) or sim.org.members(dept):
            return sim.update_department(dept, name=f"kept {n}", deliver=False)
        return sim.delete_department(dept, deliver=False)


def explain(problems: list[str], inbox) -> str:  # noqa: ANN001
    """The events about the objects named in the first problems, oldest first (to diagnose a failure)."""
    import re

    lines = list(problems)
    for problem in problems[:4]:
        for name in re.findall(r"'([^']+)'|user (\S+):|department (\d+):", problem):
            key = next(x for x in name if x)
            for e in inbox.order_by("create_time"):
                text = str(e.payload)
                if key.lower() in text.lower():
                    lines.append(f"  {key}: #{e.pk} ct={e.create_time} {e.change_type} {e.payload} run={e.run_id}")
    return "\n".join(lines)


@pytest.mark.worker
@pytest.mark.postgres
@pytest.mark.redis
def test_500_concurrent_callbacks_during_a_worker_full_sync_converge_and_apply_once(start_worker, live_server):
    rng = random.Random(int(os.environ.get("WECOM_LOAD_SEED", "500")))
    with WeComSimulator(generate_organisation(users=3000, departments=60, seed=14)) as sim:
        source = sim_source(sim)
        url = live_server.url + source.get_callback_path()
        sim.set_callback(url, TOKEN, AES_KEY)
        worker = start_worker(concurrency=2, pool="prefork")  # one child syncs, the other takes events
        sim.faults.delay(0.25, path="user/list")  # a fetch of a few seconds: callbacks land during it
        run = SyncRun.objects.create(source=source, status=SyncRun.Status.QUEUED)
        tasks.full_sync.delay(source.pk, run_id=run.pk)
        wait_until(lambda: SyncRun.objects.get(pk=run.pk).status == SyncRun.Status.RUNNING, 60, 0.05)

        mutator = Mutator(sim, rng)
        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=16))

        def post(xml: str) -> int:
            body, params = sim.build_callback(xml)
            response = session.post(url, params=params, data=body.encode(), timeout=30,
                                    headers={"Content-Type": "text/xml"})
            return response.status_code

        sent: list[str] = []
        first_post = timezone.now()
        with ThreadPoolExecutor(8) as pool:
            futures = []
            while len(futures) < CALLBACKS:
                if sent and rng.random() < 0.2:
                    xml = rng.choice(sent)  # WeCom redelivers: the same event again
                else:
                    xml = mutator.next()
                    sent.append(xml)
                futures.append(pool.submit(post, xml))
            statuses = [f.result() for f in futures]
        last_post = timezone.now()
        assert statuses == [200] * CALLBACKS

        run = wait_until(lambda: finished(run.pk), 120, 0.2, f"the full sync did not finish:\n{worker.log_tail()}")
        assert run.status in (SyncRun.Status.SUCCEEDED, SyncRun.Status.PARTIAL), run.message
        # The sync really ran while the callbacks arrived.
        assert run.started_at < last_post and run.finished_at > first_post
        sim.faults.clear()

        # Events deferred while the sync held the lock are due later; the periodic requeue sends them.
        inbox = CallbackEvent.objects.filter(source=source)

        def drained() -> bool:
            if not inbox.filter(status="pending").exists():
                return True
            events.requeue_pending_events(now=timezone.now() + timedelta(seconds=61))
            return False

        wait_until(drained, 120, 1.0, f"events still pending:\n{worker.log_tail()}")

        # Every distinct event stored once, applied once.
        assert inbox.count() == len(sent)
        assert inbox.values("dedupe_key").distinct().count() == len(sent)
        failed = list(inbox.exclude(status="applied").values_list("change_type", "status", "last_error"))
        assert failed == []
        assert not inbox.filter(run__isnull=True).exists()
        event_runs = SyncRun.objects.filter(source=source, kind="events")
        assert not event_runs.exclude(status="succeeded").exists()
        # Each run's event counter equals the events pointing at it: none was counted in two runs.
        per_run = dict(inbox.values_list("run").annotate(n=Count("pk")).values_list("run", "n"))
        assert {r.pk: r.counters["events"] for r in event_runs if r.counters.get("events")} == per_run
        coalesced = SyncRunChange.objects.filter(run__in=event_runs, object_type="event")
        assert coalesced.count() == len(sent) - len(per_run)
        assert coalesced.values("external_id").distinct().count() == coalesced.count()

        # No duplicate rows, no deadlock, and the mirror equals the directory.
        assert "deadlock" not in worker.log_tail(400).lower()
        # Every Django account belongs to one mirror, except accounts retired (inactive) when a rename took a
        # userid over from a mirror a straddling sync had created.
        assert not User.objects.filter(wecom_accounts__isnull=True, is_active=True).exists()
        assert User.objects.filter(wecom_accounts__isnull=False).count() == ExternalUser.objects.filter(
            source=source).count()
        assert ExternalUser.objects.values("user").annotate(n=Count("pk")).filter(n__gt=1).count() == 0
        assert ExternalMembership.objects.values("user", "department").annotate(n=Count("pk")).filter(
            n__gt=1).count() == 0
        problems = directory_diff(source, sim)
        assert problems == [], explain(problems, inbox)


def test_member_event_handled_before_its_new_department_event_keeps_the_membership():
    """Regression (found by the test above): coalesced or out-of-order events once dropped the membership in
    a department whose create_party was not processed yet, and hung a new department under the root when
    its parent's create_party came later. Both now fetch the missing departments first."""
    from wecom_sync.callbacks import parse_event, store_event
    from wecom_sync.services import run_full_sync

    with WeComSimulator(generate_organisation(users=10, departments=3, seed=9)) as sim:
        source = sim_source(sim)
        assert run_full_sync(source).status == SyncRun.Status.SUCCEEDED
        userid = sorted(sim.org.users)[0]
        parent_xml = sim.add_department({"name": "parent", "parentid": 1}, deliver=False)
        parent_id = max(sim.org.departments)
        child_xml = sim.add_department({"name": "child", "parentid": parent_id}, deliver=False)
        child_id = max(sim.org.departments)
        move_xml = sim.move_user(userid, [child_id], deliver=False)
        stored = [store_event(source, parse_event(xml))[0] for xml in (parent_xml, child_xml, move_xml)]
        # WeCom's order is parent, child, move; the worker handles the move first, then the child.
        assert events.process_event(stored[2].pk) == "applied"
        assert events.process_event(stored[1].pk) == "applied"
        assert events.process_event(stored[0].pk) == "applied"
        assert directory_diff(source, sim) == []


def test_rename_event_after_a_sync_already_mirrored_the_new_userid_keeps_the_members_account():
    """Regression (found by the load test): a full sync whose per-department fetch straddled a rename saw
    both userids; the rename event then could not re-key (the new userid was taken) and the old mirror
    stayed active (or, once removed, the member was left on the new account). Once WeCom confirms the old
    userid is gone, the old mirror and its account now take the new userid over."""
    from wecom_sync.callbacks import parse_event, store_event
    from wecom_sync.client import WeComClient
    from wecom_sync.services import run_full_sync
    from wecom_sync.sync.objects import apply_remote_objects
    from wecom_sync.sync.snapshot import RemoteUser

    with WeComSimulator(generate_organisation(users=10, departments=3, seed=10)) as sim:
        source = sim_source(sim)
        assert run_full_sync(source).status == SyncRun.Status.SUCCEEDED
        old = next(u for u, data in sorted(sim.org.users.items()) if data["status"] == 1)
        event = store_event(source, parse_event(sim.rename_userid(old, f"{old}New", deliver=False)))[0]
        # What the straddling full sync did: it mirrored the new userid as a member of its own.
        account = ExternalUser.objects.get(source=source, userid_key=old.lower()).user
        torn = SyncRun.objects.create(source=source, status=SyncRun.Status.SUCCEEDED)
        remote = RemoteUser.from_api(WeComClient.from_source(source).get_user(f"{old}New"))
        apply_remote_objects(source, torn, users=[remote])
        spurious = ExternalUser.objects.get(source=source, userid_key=f"{old}new".lower()).user
        assert spurious != account
        assert events.process_event(event.pk) == "applied"
        assert directory_diff(source, sim) == []
        # Identity survives the rename: the member keeps the original account; the spurious one is retired.
        mirror = ExternalUser.objects.get(source=source, userid_key=f"{old}new".lower())
        assert mirror.user == account and mirror.user.is_active
        assert not ExternalUser.objects.filter(source=source, userid_key=old.lower()).exists()
        spurious.refresh_from_db()
        assert not spurious.is_active


def test_userid_of_a_departed_member_taken_by_a_rename_keeps_each_person_on_their_own_account():
    """A member renamed to the userid of someone who left (and whose mirror and deactivated account remain)
    keeps their own account; the departed member's account is not handed over or reactivated."""
    from wecom_sync.callbacks import parse_event, store_event
    from wecom_sync.services import run_full_sync

    with WeComSimulator(generate_organisation(users=10, departments=3, seed=12)) as sim:
        source = sim_source(sim)
        active = [u for u, data in sorted(sim.org.users.items()) if data["status"] == 1]
        leaver, mover = active[0], active[1]
        assert run_full_sync(source).status == SyncRun.Status.SUCCEEDED
        sim.delete_user(leaver, deliver=False)
        assert run_full_sync(source).status == SyncRun.Status.SUCCEEDED
        departed = ExternalUser.objects.get(source=source, userid_key=leaver.lower())
        assert departed.is_removed and not departed.user.is_active
        account = ExternalUser.objects.get(source=source, userid_key=mover.lower()).user
        event = store_event(source, parse_event(sim.rename_userid(mover, leaver, deliver=False)))[0]
        assert events.process_event(event.pk) == "applied"
        assert directory_diff(source, sim) == []
        mirror = ExternalUser.objects.get(source=source, userid_key=leaver.lower())
        assert mirror.user == account and account.is_active
        departed.user.refresh_from_db()
        assert not departed.user.is_active
