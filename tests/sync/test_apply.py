"""The writers (wecom_sync.sync.applier and its parts), the adapter and the services, with hand-built snapshots."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.factories import make_snapshot as snapshot
from tests.factories import make_source
from tests.factories import remote_department as dept
from tests.factories import remote_member as member
from wecom_sync import services, signals
from wecom_sync.adapter import DefaultWeComAdapter, get_adapter
from wecom_sync.models import (
    ExternalDepartment,
    ExternalMembership,
    ExternalUser,
    SyncRun,
    SyncRunChange,
    SyncSource,
)
from wecom_sync.sync import applier, bulk, departments, local, lock, objects, runner

User = get_user_model()
KEYS = ["tests-encryption-key-1"]


ROOT = dept(1, parent=0, name="Root")


def ext(source, userid):
    return ExternalUser.objects.select_related("user").get(source=source, userid_key=userid.lower())


# -- the adapter --------------------------------------------------------------------------------------------


def test_username_collision_gets_a_deterministic_suffix(source, run):
    User.objects.create_user("zoe", password="x")
    objects.apply_remote_objects(source, run, departments=[ROOT], users=[member("zoe")])
    username = ext(source, "zoe").user.username
    assert username.startswith("zoe-") and len(username) == len("zoe-") + 6
    other = make_source(corp_id=source.corp_id)
    run2 = SyncRun.objects.create(source=other, kind=SyncRun.Kind.EVENTS)
    User.objects.filter(username=username).update(username="moved-away")
    objects.apply_remote_objects(other, run2, departments=[ROOT], users=[member("zoe")])
    assert ext(other, "zoe").user.username == username  # same corp and userid, same suffix


def test_email_prefers_biz_mail_and_empty_values_never_erase(source, run):
    objects.apply_remote_objects(source, run, departments=[ROOT],
                               users=[member("em", email="me@home.example", biz_mail="me@corp.example")])
    assert ext(source, "em").user.email == "me@corp.example"
    objects.apply_remote_objects(source, run, users=[member("em", email="", biz_mail="", name="")])
    user = ext(source, "em").user
    assert user.email == "me@corp.example" and user.first_name == "Em"


@pytest.mark.parametrize(("setting", "expected"), [(True, True), (False, False)])
def test_not_activated_status_follows_the_setting(source, run, setting, expected):
    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": KEYS, "NOT_ACTIVATED_USERS_ACTIVE": setting}):
        objects.apply_remote_objects(source, run, departments=[ROOT], users=[member("inv", status=4)])
        assert ext(source, "inv").user.is_active is expected
    assert [get_adapter().is_active_for_status(s) for s in (1, 2, 5)] == [True, False, False]


def test_linking_existing_users(source, run):
    existing = User.objects.create_user("legacy", email="Legacy@Corp.example")
    User.objects.create_user("blank1", email="")
    User.objects.create_user("blank2", email="")
    User.objects.create_user("twin1", email="twin@corp.example")
    User.objects.create_user("twin2", email="TWIN@corp.example")
    users = [
        member("leg", email="legacy@corp.example"),
        member("noemail"),
        member("twin", email="twin@corp.example"),
    ]
    counters = objects.apply_remote_objects(source, run, departments=[ROOT], users=users)
    assert counters == {"departments_created": 1, "users_created": 2, "users_failed": 1}
    assert ext(source, "leg").user_id == existing.pk
    assert ext(source, "noemail").user.username == "noemail"  # never linked on an empty value
    assert not ExternalUser.objects.filter(source=source, userid_key="twin").exists()
    failed = run.changes.get(action="failed")
    assert failed.external_id == "twin" and "2 existing users" in failed.error
    # a user already linked to another member is not a candidate
    objects.apply_remote_objects(source, run, users=[member("leg2", email="legacy@corp.example")])
    assert ext(source, "leg2").user_id != existing.pk


def test_link_by_username(source, run):
    existing = User.objects.create_user("kim")
    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": KEYS, "LINK_EXISTING_BY": ["username"]}):
        objects.apply_remote_objects(source, run, departments=[ROOT], users=[member("kim")])
    assert ext(source, "kim").user_id == existing.pk


class NullEmailAdapter(DefaultWeComAdapter):
    """Breaks one member at the database level (NOT NULL) to prove per-object isolation."""

    def new_user(self, source, remote):
        user = super().new_user(source, remote)
        if remote.userid == "broken":
            user.email = None
        return user


def test_one_bad_object_fails_alone_and_the_run_ends_partial(source, fake_fetch):
    fake_fetch["snapshot"] = snapshot([ROOT], [member("ok1"), member("broken"), member("ok2")])
    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": KEYS, "ADAPTER": "tests.sync.test_apply.NullEmailAdapter"}):
        run = services.run_full_sync(source)
    assert run.status == SyncRun.Status.PARTIAL
    assert set(ExternalUser.objects.filter(source=source).values_list("userid", flat=True)) == {"ok1", "ok2"}
    failed = run.changes.get(action="failed")
    assert failed.external_id == "broken" and failed.error and failed.applied is False
    assert run.counters["users_failed"] == 1
    # a re-run converges once the adapter is fixed
    assert services.run_full_sync(source).status == SyncRun.Status.SUCCEEDED
    assert ExternalUser.objects.filter(source=source).count() == 3


def test_signals_notify(source, run):
    seen = []

    def receiver(signal, **kwargs):
        seen.append((signal, kwargs["external_user"].userid, kwargs["user"].username))

    hooks = [signals.user_created, signals.user_updated, signals.user_deactivated, signals.user_reactivated]
    for s in hooks:
        s.connect(receiver)
    try:
        objects.apply_remote_objects(source, run, departments=[ROOT], users=[member("sig")])
        objects.apply_remote_objects(source, run, users=[member("sig", name="Sig Renamed")])
        objects.apply_remote_objects(source, run, users=[member("sig", status=2, name="Sig Renamed")])
        objects.apply_remote_objects(source, run, users=[member("sig", status=1, name="Sig Renamed")])
        objects.remove_users(source, run, ["sig"])
    finally:
        for s in hooks:
            s.disconnect(receiver)
    assert [s for s, _u, _n in seen] == [
        signals.user_created, signals.user_updated, signals.user_deactivated, signals.user_reactivated,
        signals.user_deactivated,
    ]


# -- groups -------------------------------------------------------------------------------------------------


def test_mirrored_groups_follow_departments_and_leave_others_alone(source, run):
    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": KEYS, "MIRROR_GROUPS": True}):
        Group.objects.create(name="Dept 2")  # a name clash with a group the source did not create
        objects.apply_remote_objects(source, run, departments=[ROOT, dept(2)], users=[member("g", (2,))])
        applier.Applier(source, run).ensure_groups()
        d2 = ExternalDepartment.objects.get(source=source, department_id=2)
        assert d2.group is not None and d2.group.name != "Dept 2"
        user = ext(source, "g").user
        assert d2.group in user.groups.all()
        objects.apply_remote_objects(source, run, departments=[dept(2, name="Sales")])
        d2.group.refresh_from_db()
        assert d2.group.name == "Sales"
        objects.apply_remote_objects(source, run, users=[member("g", (1,))])
        assert d2.group not in user.groups.all()
        assert Group.objects.filter(name="Dept 2").exists()


# -- lock and services --------------------------------------------------------------------------------------


def test_disabled_source_is_refused(source):
    source.enabled = False
    source.save()
    run = services.run_full_sync(source)
    assert run.status == SyncRun.Status.CANCELLED and "disabled" in run.message


def test_fetch_error_fails_the_run_without_secrets(source, monkeypatch):
    from wecom_sync.exceptions import WeComAPIError

    def broken(source, progress=None):
        raise WeComAPIError(40001, "invalid credential")

    monkeypatch.setattr(runner, "fetch", broken)
    run = services.run_full_sync(source)
    assert run.status == SyncRun.Status.FAILED and "40001" in run.message
    assert source.secret not in run.message
    assert SyncSource.objects.get(pk=source.pk).lock_run_id is None


def test_incomplete_snapshot_applies_creates_and_skips_removals(source, fake_fetch):
    fake_fetch["snapshot"] = snapshot([ROOT, dept(2)], [member("a"), member("b", (2,))])
    services.run_full_sync(source)
    fake_fetch["snapshot"] = snapshot([ROOT], [member("a", name="A Changed"), member("c")], problems=["department:2"])
    run = services.run_full_sync(source)
    assert run.status == SyncRun.Status.PARTIAL and run.snapshot_complete is False
    assert run.counters["users_created"] == 1 and run.counters["users_updated"] == 1
    assert not ExternalUser.objects.filter(is_removed=True).exists()
    assert not ExternalDepartment.objects.filter(is_removed=True).exists()
    assert ExternalMembership.objects.filter(user__userid="b").exists()


def test_approval_skips_members_seen_again_after_the_hold(source, fake_fetch):
    source.removal_threshold_count = 1
    source.save()
    fake_fetch["snapshot"] = snapshot([ROOT], [member("a"), member("b"), member("c")])
    services.run_full_sync(source)
    fake_fetch["snapshot"] = snapshot([ROOT], [member("a")])
    held = services.run_full_sync(source)
    assert held.status == SyncRun.Status.HELD
    # "b" comes back through a callback before the admin decides
    event_run = SyncRun.objects.create(source=source, kind=SyncRun.Kind.EVENTS)
    objects.apply_remote_objects(source, event_run, users=[member("b", name="B Back")])
    services.approve_run(held)
    held.refresh_from_db()
    assert held.status == SyncRun.Status.SUCCEEDED
    assert ext(source, "c").is_removed and not ext(source, "b").is_removed
    assert held.counters["approved_skipped"] == 1
    assert held.changes.filter(applied=False, external_id="b").exists()
    with pytest.raises(services.RunStateError):
        services.reject_run(held)


def test_newer_run_supersedes_a_held_one(source, fake_fetch):
    source.removal_threshold_count = 0
    source.save()
    fake_fetch["snapshot"] = snapshot([ROOT], [member("a"), member("b")])
    services.run_full_sync(source)
    fake_fetch["snapshot"] = snapshot([ROOT], [member("a")])
    held = services.run_full_sync(source)
    assert held.status == SyncRun.Status.HELD
    fake_fetch["snapshot"] = snapshot([ROOT], [member("a"), member("b")])
    assert services.run_full_sync(source).status == SyncRun.Status.SUCCEEDED
    held.refresh_from_db()
    assert held.status == SyncRun.Status.CANCELLED and "Superseded" in held.message


def test_scheduled_syncs_start_only_due_sources(source, fake_fetch):
    fake_fetch["snapshot"] = snapshot([ROOT], [member("a")])
    source.sync_interval_minutes = 60
    source.save()
    make_source(sync_interval_minutes=0)  # on demand only
    runs = services.run_scheduled_syncs()
    assert [r.source_id for r in runs] == [source.pk] and runs[0].trigger == SyncRun.Trigger.SCHEDULE
    assert runs[0].status == SyncRun.Status.SUCCEEDED
    assert services.run_scheduled_syncs() == []  # ran less than an hour ago
    SyncRun.objects.filter(pk=runs[0].pk).update(created_at=timezone.now() - timedelta(hours=2))
    queued = []
    assert len(services.run_scheduled_syncs(enqueue=queued.append)) == 1
    assert queued[0].status == SyncRun.Status.QUEUED
    assert services.run_scheduled_syncs(enqueue=queued.append) == []  # one is already queued
    # a queued run no worker ever picked up is closed after a while and no longer blocks the schedule
    SyncRun.objects.filter(pk=queued[0].pk).update(created_at=timezone.now() - timedelta(days=1))
    assert services.close_stale_runs() == 1
    assert SyncRun.objects.get(pk=queued[0].pk).status == SyncRun.Status.FAILED
    assert len(services.run_scheduled_syncs(enqueue=queued.append)) == 1


def test_tasks_are_thin(source, fake_fetch):
    from wecom_sync import tasks

    fake_fetch["snapshot"] = snapshot([ROOT], [member("t")])
    run_id = tasks.full_sync.delay(source.pk, dry_run=True).get()
    run = SyncRun.objects.get(pk=run_id)
    assert run.kind == SyncRun.Kind.DRY_RUN and not ExternalUser.objects.exists()
    assert tasks.full_sync.delay(999_999).get() is None
    dead = SyncRun.objects.create(source=source, status=SyncRun.Status.RUNNING)
    SyncRun.objects.filter(pk=dead.pk).update(created_at=timezone.now() - timedelta(days=1),
                                              heartbeat_at=timezone.now() - timedelta(days=1))
    assert tasks.close_stale_runs.delay().get() == 1
    source.sync_interval_minutes = 5
    source.save()
    assert tasks.run_scheduled_syncs.delay().get() == 1
    assert ExternalUser.objects.filter(source=source).count() == 1


# -- scaling ------------------------------------------------------------------------------------------------


def _queries_for(source, fake_fetch, users: int) -> int:
    depts = [ROOT] + [dept(i) for i in range(2, 12)]
    fake_fetch["snapshot"] = snapshot(depts, [member(f"user{i}", (2 + i % 10, 1)) for i in range(users)])
    with CaptureQueriesContext(connection) as ctx:
        run = services.run_full_sync(source)
    assert run.status == SyncRun.Status.SUCCEEDED
    return len(ctx.captured_queries)


def test_queries_grow_with_batches_not_users(db, fake_fetch):
    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": KEYS, "BATCH_SIZE": 50}):
        small = _queries_for(make_source(), fake_fetch, 100)   # 2 batches
        large = _queries_for(make_source(), fake_fetch, 400)   # 8 batches
    per_batch = (large - small) / 6
    assert per_batch <= 12, (small, large)
    assert large < 400  # far fewer than one query per user
    # a no-op re-sync reads, writes nothing but the run row
    src = make_source()
    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": KEYS, "BATCH_SIZE": 50}):
        _queries_for(src, fake_fetch, 200)
        with CaptureQueriesContext(connection) as ctx:
            run = services.run_full_sync(src)
    run_log = ('"wecom_sync_syncrun"', '"wecom_sync_syncsource"')
    writes = [q["sql"] for q in ctx.captured_queries
              if q["sql"].split()[0] in ("INSERT", "UPDATE", "DELETE") and q["sql"].split()[2] not in run_log
              and q["sql"].split()[1] not in run_log]
    assert writes == [] and run.changes.count() == 0


def test_dry_run_records_the_plan_only(source, fake_fetch):
    fake_fetch["snapshot"] = snapshot([ROOT, dept(2)], [member("a"), member("b", (2,))])
    run = services.run_full_sync(source, dry_run=True)
    assert run.kind == SyncRun.Kind.DRY_RUN and run.status == SyncRun.Status.SUCCEEDED
    assert not ExternalUser.objects.exists() and not ExternalDepartment.objects.exists()
    assert User.objects.count() == 0
    assert set(run.changes.values_list("action", flat=True)) == {"created"}
    assert run.changes.count() == 4 and not run.changes.filter(applied=True).exists()
    assert SyncRunChange.objects.exclude(run=run).count() == 0


def test_linking_works_across_many_batches(source, fake_fetch):
    """From the second batch on, emails are looked up in a per-run index (one scan instead of one per batch)."""
    late = User.objects.create_user("late", email="Late@Corp.example")
    users = [member(f"m{i}", email=f"m{i}@corp.example") for i in range(6)] + [member("zz", email="late@corp.example")]
    fake_fetch["snapshot"] = snapshot([ROOT], users)
    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": KEYS, "BATCH_SIZE": 2}):
        run = services.run_full_sync(source)
    assert run.status == SyncRun.Status.SUCCEEDED
    assert ext(source, "zz").user_id == late.pk
    assert User.objects.count() == 7


def test_local_users_read_in_chunks_match_a_whole_read(source, run):
    users = [member(f"c{i}", (1, 2) if i % 2 else (2,)) for i in range(7)]
    objects.apply_remote_objects(source, run, departments=[ROOT, dept(2)], users=users)
    objects.remove_users(source, run, ["c3"])
    whole = local.load_local_state(source)
    departments = local.load_local_departments(source)
    chunks = list(local.iter_local_users(source, departments, size=3))
    assert [len(c.users) for c in chunks] == [3, 3, 1]
    merged_users, merged_memberships = {}, {}
    for chunk in chunks:
        merged_users.update(chunk.users)
        merged_memberships.update(chunk.memberships)
    assert merged_users == whole.users and merged_memberships == whole.memberships
    assert whole.users["c3"].is_removed is True and "c3" not in whole.memberships
    assert whole.memberships["c1"] == ((1, 0, False, True), (2, 0, False, False))


def test_cyclic_gc_is_paused_during_a_run_and_restored(source, fake_fetch):
    import gc

    seen = []

    def fetch(source, progress=None):
        seen.append(gc.isenabled())
        return snapshot([ROOT], [member("g1")])

    fake_fetch["snapshot"] = None
    runner.fetch = fetch
    assert gc.isenabled()
    assert services.run_full_sync(source).status == SyncRun.Status.SUCCEEDED
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        services.run_full_sync(source)
        assert not gc.isenabled()  # a process that had it off keeps it off
    finally:
        gc.enable()


def _flaky_department_insert(monkeypatch, fail_on_call: int = 2):
    """Make the n-th department insert fail once, as a transient database error would."""
    from django.db import OperationalError

    real = bulk.insert_instances
    calls = {"n": 0}

    def flaky(model, objs, key, scope=None):
        if model is ExternalDepartment:
            calls["n"] += 1
            if calls["n"] == fail_on_call:
                raise OperationalError("database is locked")
        return real(model, objs, key, scope)

    monkeypatch.setattr(departments, "insert_instances", flaky)


def test_a_rolled_back_department_batch_leaves_no_stale_keys(source, fake_fetch, monkeypatch):
    """The batch's second tree level fails once; the item-by-item retry must not reuse rolled-back keys."""
    fake_fetch["snapshot"] = snapshot(
        [ROOT, dept(2, parent=1), dept(3, parent=2)], [member("amy", (1,)), member("bob", (3,))]
    )
    _flaky_department_insert(monkeypatch)
    result = services.run_full_sync(source)
    rows = {d: p for d, p in ExternalDepartment.objects.filter(source=source)
            .values_list("department_id", "parent__department_id")}
    assert rows == {1: None, 2: 1, 3: 2}
    assert result.status == SyncRun.Status.SUCCEEDED
    memberships = set(ExternalMembership.objects.values_list("user__userid", "department__department_id"))
    assert memberships == {("amy", 1), ("bob", 3)}


def test_a_superuser_disabled_in_wecom_is_not_reported_deactivated(source, run):
    objects.apply_remote_objects(source, run, departments=[ROOT], users=[member("boss")])
    ext = ExternalUser.objects.get(source=source)
    ext.user.is_superuser = True
    ext.user.save()
    got = []

    def receiver(**kwargs):
        got.append(kwargs["user"].pk)

    signals.user_deactivated.connect(receiver)
    try:
        counters = objects.apply_remote_objects(source, run, users=[member("boss", status=2)])
    finally:
        signals.user_deactivated.disconnect(receiver)
    ext.user.refresh_from_db()
    assert ext.user.is_active and got == []
    assert counters.get("users_deactivated", 0) == 0
    ext.refresh_from_db()
    assert ext.status == 2  # the mirror follows WeCom


def test_a_duplicate_task_of_a_running_run_does_nothing(source, fake_fetch):
    fake_fetch["snapshot"] = snapshot([ROOT], [member("amy", (1,))])
    run = SyncRun.objects.create(source=source, kind=SyncRun.Kind.FULL, status=SyncRun.Status.QUEUED)
    assert lock.acquire(source, run)
    SyncRun.objects.filter(pk=run.pk).update(status=SyncRun.Status.RUNNING, started_at=timezone.now(),
                                             heartbeat_at=timezone.now())
    again = services.run_full_sync(source, run=SyncRun.objects.get(pk=run.pk))
    assert again.status == SyncRun.Status.RUNNING  # left to the worker that has it
    assert lock.holder(source) == run.pk
    assert ExternalUser.objects.filter(source=source).count() == 0


def test_approve_and_reject_decide_once(source):
    held = SyncRun.objects.create(source=source, kind=SyncRun.Kind.FULL, status=SyncRun.Status.HELD,
                                  finished_at=timezone.now())
    services.reject_run(held)
    with pytest.raises(services.RunStateError):
        services.approve_run(SyncRun.objects.get(pk=held.pk))
    stale_copy = SyncRun.objects.get(pk=held.pk)
    stale_copy.status = SyncRun.Status.HELD  # a second admin tab that still shows the run as held
    with pytest.raises(services.RunStateError):
        services.reject_run(stale_copy)
    assert SyncRun.objects.get(pk=held.pk).status == SyncRun.Status.REJECTED
