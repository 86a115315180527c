"""Acceptance tests of the full sync against the WeCom simulator over HTTP (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from tests.factories import simulator_source
from wecom_sync import services
from wecom_sync.models import (
    ExternalDepartment,
    ExternalMembership,
    ExternalUser,
    SyncRun,
    SyncRunChange,
    SyncSource,
)
from wecom_sync.simulator import WeComSimulator, generate_organisation
from wecom_sync.sync import lock

User = get_user_model()


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=40, departments=8, seed=3)) as simulator:
        yield simulator


source_for = simulator_source


@pytest.fixture
def source(sim):
    return source_for(sim)


def active_for(status: int) -> bool:
    return status in (1, 4)


def assert_mirrors(source: SyncSource, sim: WeComSimulator) -> None:
    """The local state equals the simulator's directory."""
    org_depts = sim.org.departments
    local_depts = {d.department_id: d for d in ExternalDepartment.objects.filter(source=source, is_removed=False)}
    assert set(local_depts) == set(org_depts)
    for dept_id, remote in org_depts.items():
        local = local_depts[dept_id]
        assert local.name == remote["name"]
        assert local.order == remote.get("order", 0)
        assert list(local.leaders) == list(remote.get("department_leader") or [])
        expected_parent = remote.get("parentid") if dept_id != 1 else None
        if expected_parent not in org_depts:
            expected_parent = None if dept_id == 1 else 1
        assert (local.parent.department_id if local.parent else None) == expected_parent
    local_users = {u.userid_key: u for u in ExternalUser.objects.filter(source=source, is_removed=False)}
    assert set(local_users) == {k.lower() for k in sim.org.users}
    memberships: dict[int, set] = {}
    for m in ExternalMembership.objects.filter(user__source=source).select_related("department"):
        memberships.setdefault(m.user_id, set()).add((m.department.department_id, m.order, m.is_leader, m.is_main))
    for userid, remote in sim.org.users.items():
        local = local_users[userid.lower()]
        assert local.userid == userid
        assert local.name == remote["name"]
        assert local.status == remote["status"]
        assert local.user is not None
        assert local.user.is_active == active_for(remote["status"])
        assert local.user.first_name == remote["name"].rpartition(" ")[0] or remote["name"]
        email = remote.get("biz_mail") or remote.get("email")
        if email:
            assert local.user.email == email
        main = remote.get("main_department") or remote["department"][0]
        expected = {
            (d, remote["order"][i], bool(remote["is_leader_in_dept"][i]), d == main)
            for i, d in enumerate(remote["department"])
        }
        assert memberships.get(local.pk, set()) == expected
    for gone in ExternalUser.objects.filter(source=source, is_removed=True):
        assert gone.user is None or not gone.user.is_active
        assert not gone.memberships.exists()


def sync(source: SyncSource, **kwargs) -> SyncRun:
    run = services.run_full_sync(source, **kwargs)
    run.refresh_from_db()
    return run


def changes(run: SyncRun, **filters) -> list[SyncRunChange]:
    return list(run.changes.filter(**filters))


@pytest.mark.django_db
@pytest.mark.parametrize("strategy", ["app", "contact_sync"])
def test_first_sync_mirrors_the_directory_and_resync_is_a_no_op(sim, strategy):
    source = source_for(sim, fetch_strategy=strategy)
    run = sync(source)
    assert run.status == SyncRun.Status.SUCCEEDED, run.message
    assert run.snapshot_complete is True
    assert run.counters["users_created"] == 40
    assert run.counters["departments_created"] == 8
    assert run.progress_done == run.progress_total > 0
    assert_mirrors(source, sim)
    assert run.changes.filter(action="created", object_type="user").count() == 40
    assert source.lock_run_id is None and SyncSource.objects.get(pk=source.pk).lock_run_id is None

    again = sync(source)
    assert again.status == SyncRun.Status.SUCCEEDED
    assert again.counters["users_unchanged"] == 40
    assert again.changes.count() == 0
    assert_mirrors(source, sim)


def _first_user(sim, status=1, multi=False):
    for userid, user in sim.org.users.items():
        if user["status"] == status and (not multi or len(user["department"]) > 1):
            return userid
    raise AssertionError("no such user in the generated organisation")


def _leaf_department(sim) -> int:
    parents = {d.get("parentid") for d in sim.org.departments.values()}
    return next(d for d in sorted(sim.org.departments) if d not in parents and d != 1)


def change_add(sim):
    sim.add_user({"userid": "NewPerson", "name": "New Person", "department": [1], "email": "new@example.com"},
                 deliver=False)
    return "NewPerson", "created"


def change_rename(sim):
    userid = _first_user(sim)
    sim.update_user(userid, name="Renamed Person", deliver=False)
    return userid, "updated"


def change_move(sim):
    userid = _first_user(sim)
    current = sim.org.users[userid]["department"]
    target = next(d for d in sorted(sim.org.departments) if d not in current)
    sim.move_user(userid, [target], main_department=target, deliver=False)
    return userid, "moved"


def change_reorder(sim):
    userid = _first_user(sim)
    user = sim.org.users[userid]
    sim.update_user(userid, order=[o + 7 for o in user["order"]], deliver=False)
    return userid, "updated"


def change_disable(sim):
    userid = _first_user(sim)
    sim.set_user_status(userid, 2, deliver=False)
    return userid, "deactivated"


def change_leave(sim):
    userid = _first_user(sim)
    sim.set_user_status(userid, 5, deliver=False)
    return userid, "deactivated"


def change_delete(sim):
    userid = _first_user(sim)
    sim.delete_user(userid, deliver=False)
    return userid, "deactivated"


def change_leader(sim):
    userid = _first_user(sim)
    user = sim.org.users[userid]
    flags = [0 if f else 1 for f in user["is_leader_in_dept"]]
    sim.update_user(userid, is_leader_in_dept=flags, deliver=False)
    return userid, "updated"


def change_main_department(sim):
    userid = _first_user(sim, multi=True)
    user = sim.org.users[userid]
    other = next(d for d in user["department"] if d != user["main_department"])
    sim.move_user(userid, list(user["department"]), main_department=other, deliver=False)
    return userid, "moved"


def change_department_move(sim):
    leaf = _leaf_department(sim)
    other = next(d for d in sorted(sim.org.departments) if d not in (leaf, sim.org.departments[leaf]["parentid"]))
    sim.move_department(leaf, other, deliver=False)
    return str(leaf), "moved"


def change_department_rename(sim):
    leaf = _leaf_department(sim)
    sim.update_department(leaf, name="Renamed Dept", order=99, deliver=False)
    return str(leaf), "updated"


CHANGES = {
    "add": change_add,
    "rename": change_rename,
    "move": change_move,
    "reorder": change_reorder,
    "disable": change_disable,
    "leave": change_leave,
    "delete": change_delete,
    "leader": change_leader,
    "main_department": change_main_department,
    "department_move": change_department_move,
    "department_rename": change_department_rename,
}


@pytest.mark.django_db
@pytest.mark.parametrize("kind", sorted(CHANGES))
def test_resync_after_each_kind_of_change_mirrors_and_records_it(sim, source, kind):
    assert sync(source).status == SyncRun.Status.SUCCEEDED
    external_id, action = CHANGES[kind](sim)
    run = sync(source)
    assert run.status == SyncRun.Status.SUCCEEDED, run.message
    assert_mirrors(source, sim)
    recorded = changes(run, external_id=external_id)
    assert [c.action for c in recorded] == [action]
    assert recorded[0].applied is True
    # a second re-sync converges: nothing left to do
    assert sync(source).changes.count() == 0


@pytest.mark.django_db
def test_userid_rename_keeps_the_same_django_user(sim, source):
    sync(source)
    userid = next(u for u, data in sim.org.users.items() if data["status"] == 1 and data.get("email"))
    django_user = ExternalUser.objects.get(source=source, userid=userid).user
    sim.rename_userid(userid, "renamed-id", deliver=False)
    run = sync(source)
    assert run.status == SyncRun.Status.SUCCEEDED
    assert_mirrors(source, sim)
    ext = ExternalUser.objects.get(source=source, userid_key="renamed-id")
    assert ext.user_id == django_user.pk
    assert ext.user.is_active
    assert not ExternalUser.objects.filter(source=source, userid_key=userid.lower()).exists()
    [change] = changes(run, external_id="renamed-id")
    assert change.action == "updated" and change.fields["userid"] == [userid, "renamed-id"]
    assert run.counters["users_renamed"] == 1


@pytest.mark.django_db
def test_department_delete_and_comeback(sim, source):
    sim.add_department({"id": 500, "name": "Temp", "parentid": 1}, deliver=False)
    sync(source)
    assert ExternalDepartment.objects.get(source=source, department_id=500).is_removed is False
    sim.delete_department(500, deliver=False)
    run = sync(source)
    assert [c.action for c in changes(run, external_id="500")] == ["removed"]
    assert ExternalDepartment.objects.get(source=source, department_id=500).is_removed is True
    assert_mirrors(source, sim)
    sim.add_department({"id": 500, "name": "Temp again", "parentid": 1}, deliver=False)
    run = sync(source)
    assert [c.action for c in changes(run, external_id="500")] == ["reactivated"]
    assert_mirrors(source, sim)


@pytest.mark.django_db
def test_member_who_comes_back_is_reactivated_on_the_same_account(sim, source):
    sync(source)
    userid = _first_user(sim)
    payload = dict(sim.org.users[userid])
    django_user = ExternalUser.objects.get(source=source, userid=userid).user
    sim.delete_user(userid, deliver=False)
    sync(source)
    django_user.refresh_from_db()
    assert not django_user.is_active
    sim.add_user(payload, deliver=False)
    sim.update_user(userid, **{k: payload[k] for k in ("order", "is_leader_in_dept", "main_department")},
                    deliver=False)
    run = sync(source)
    assert [c.action for c in changes(run, external_id=userid)] == ["reactivated"]
    django_user.refresh_from_db()
    assert django_user.is_active
    assert ExternalUser.objects.get(source=source, userid=userid).user_id == django_user.pk
    assert_mirrors(source, sim)


@pytest.mark.django_db
def test_http_errors_beyond_retries_remove_nobody_and_end_partial(sim):
    source = source_for(sim, fetch_strategy="app")
    sync(source)
    before = set(User.objects.filter(is_active=True).values_list("pk", flat=True))
    gone = _first_user(sim)
    sim.delete_user(gone, deliver=False)
    sim.update_user(_first_user(sim), name="Still Updated", deliver=False)
    sim.faults.http_error_next(502, count=50, path="user/list")
    run = sync(source)
    assert run.status == SyncRun.Status.PARTIAL
    assert run.snapshot_complete is False
    assert "could not be fetched" in run.message
    assert not run.changes.filter(action__in=["deactivated", "deleted", "removed"]).exists()
    assert set(User.objects.filter(is_active=True).values_list("pk", flat=True)) == before
    assert ExternalUser.objects.filter(source=source, is_removed=True).count() == 0
    assert ExternalDepartment.objects.filter(source=source, is_removed=True).count() == 0


@pytest.mark.django_db
def test_48009_on_one_department_removes_nobody_and_ends_partial(sim, source):
    sync(source)
    dept = _leaf_department(sim)
    sim.delete_user(_first_user(sim), deliver=False)
    source.fetch_strategy = "app"
    source.save()
    sim.faults.fail_next(48009, count=1, path="user/list")
    run = sync(source)
    assert run.status == SyncRun.Status.PARTIAL, run.message
    assert "48009" in run.message
    assert ExternalUser.objects.filter(source=source, is_removed=True).count() == 0
    assert ExternalDepartment.objects.filter(source=source, is_removed=True).count() == 0
    assert ExternalDepartment.objects.filter(source=source, department_id=dept).exists()
    # once WeCom answers again the removal goes through
    run = sync(source)
    assert run.status == SyncRun.Status.SUCCEEDED
    assert_mirrors(source, sim)


@pytest.mark.django_db
@pytest.mark.parametrize("batch_size", [1000, 3])  # 3: the approval reads the pending removals in chunks
def test_mass_removal_is_held_until_approved(sim, source, batch_size):
    sync(source)
    active_before = User.objects.filter(is_active=True).count()
    victims = sorted(sim.org.users)[: int(len(sim.org.users) * 0.6)]
    for userid in victims:
        sim.delete_user(userid, deliver=False)
    run = sync(source)
    assert run.status == SyncRun.Status.HELD
    assert run.counters["pending_removals"] == len(victims)
    pending = run.changes.filter(applied=False, action="deactivated")
    assert {c.external_id for c in pending} == set(victims)
    assert User.objects.filter(is_active=True).count() == active_before
    assert ExternalUser.objects.filter(source=source, is_removed=True).count() == 0
    assert SyncSource.objects.get(pk=source.pk).lock_run_id is None

    from django.conf import settings as django_settings

    with override_settings(WECOM_SYNC={**django_settings.WECOM_SYNC, "BATCH_SIZE": batch_size}):
        services.approve_run(run, user=None)
    run.refresh_from_db()
    assert run.status == SyncRun.Status.SUCCEEDED
    assert run.decided_at is not None
    assert not run.changes.filter(applied=False).exists()
    assert ExternalUser.objects.filter(source=source, is_removed=True).count() == len(victims)
    assert_mirrors(source, sim)


@pytest.mark.django_db
def test_rejected_held_run_changes_nothing_and_force_applies(sim, source):
    sync(source)
    admin = User.objects.create_user("boss", password="x")
    for userid in sorted(sim.org.users)[:30]:
        sim.delete_user(userid, deliver=False)
    run = sync(source)
    assert run.status == SyncRun.Status.HELD
    services.reject_run(run, user=admin)
    run.refresh_from_db()
    assert run.status == SyncRun.Status.REJECTED and run.decided_by == admin
    assert ExternalUser.objects.filter(source=source, is_removed=True).count() == 0
    with pytest.raises(services.RunStateError):
        services.approve_run(run)
    forced = sync(source, force=True)
    assert forced.status == SyncRun.Status.SUCCEEDED and forced.force
    assert_mirrors(source, sim)


@pytest.mark.django_db
def test_manual_memberships_groups_and_local_fields_survive(sim, source):
    with override_settings(WECOM_SYNC={"MIRROR_GROUPS": True, "ENCRYPTION_KEYS": ["tests-encryption-key-1"],
                                       "API_HOSTS": ["127.0.0.1"]}):
        sync(source)
        userid = _first_user(sim)
        ext = ExternalUser.objects.get(source=source, userid=userid)
        user = ext.user
        manual = Group.objects.create(name="Manual group")
        user.groups.add(manual)
        dept_groups = set(ExternalDepartment.objects.filter(source=source).values_list("group_id", flat=True))
        assert None not in dept_groups
        assert set(user.groups.values_list("pk", flat=True)) >= {
            m.department.group_id for m in ext.memberships.select_related("department")
        }
        # a manual member of a mirrored group who is not in that department
        outsider_dept = ExternalDepartment.objects.filter(source=source).exclude(
            pk__in=ext.memberships.values("department")).first()
        user.groups.add(outsider_dept.group)
        user.is_staff = True
        user.last_name = "Local"
        user.save()
        sim.update_user(userid, name="Changed", email="", biz_mail="", deliver=False)
        current = sim.org.users[userid]["department"]
        target = next(d for d in sorted(sim.org.departments) if d not in current and d != outsider_dept.department_id)
        sim.move_user(userid, [target], main_department=target, deliver=False)
        run = sync(source)
        assert run.status == SyncRun.Status.SUCCEEDED
        user.refresh_from_db()
        assert user.is_staff is True
        assert user.last_name == "Local"
        assert user.first_name == "Changed"
        assert user.email  # an empty remote email does not erase the local one
        groups = set(user.groups.values_list("pk", flat=True))
        target_group = ExternalDepartment.objects.get(source=source, department_id=target).group_id
        assert {manual.pk, outsider_dept.group_id, target_group} <= groups
        old_groups = set(ExternalDepartment.objects.filter(
            source=source, department_id__in=[d for d in current if d != outsider_dept.department_id]
        ).values_list("group_id", flat=True))
        assert not (old_groups & groups)


@pytest.mark.django_db
def test_superusers_are_never_deactivated(sim, source):
    sync(source)
    userid = _first_user(sim)
    user = ExternalUser.objects.get(source=source, userid=userid).user
    user.is_superuser = True
    user.save()
    sim.set_user_status(userid, 2, deliver=False)
    sync(source)
    sim.delete_user(userid, deliver=False)
    run = sync(source)
    user.refresh_from_db()
    assert user.is_active
    assert [c.action for c in changes(run, external_id=userid)] == ["skipped"]


@pytest.mark.django_db
def test_dry_run_writes_nothing_outside_the_run_log(sim, source):
    sync(source)
    sim.update_user(_first_user(sim), name="Dry Name", deliver=False)
    sim.delete_user(_first_user(sim, status=1), deliver=False)
    sim.add_user({"userid": "dryadd", "name": "Dry Add", "department": [1]}, deliver=False)

    def state():
        return (
            list(ExternalUser.objects.order_by("pk").values_list("pk", "userid", "digest", "is_removed", "name")),
            list(ExternalMembership.objects.order_by("pk").values_list("pk", "user_id", "department_id", "order")),
            list(ExternalDepartment.objects.order_by("pk").values_list("pk", "digest", "parent_id", "is_removed")),
            list(User.objects.order_by("pk").values_list("pk", "username", "is_active", "first_name", "email")),
            list(Group.objects.values_list("pk")),
            SyncSource.objects.get(pk=source.pk).last_synced_at,
        )

    before = state()
    run = sync(source, dry_run=True)
    assert run.kind == SyncRun.Kind.DRY_RUN
    assert run.status == SyncRun.Status.SUCCEEDED
    assert state() == before
    actions = {c.external_id: c.action for c in run.changes.all()}
    assert actions["dryadd"] == "created"
    assert "deactivated" in actions.values() and "updated" in actions.values()
    assert not run.changes.filter(applied=True).exists()


@pytest.mark.django_db
def test_killed_run_is_closed_by_the_stale_run_task(sim, source):
    dead = SyncRun.objects.create(source=source, status=SyncRun.Status.RUNNING, started_at=timezone.now())
    assert lock.acquire(source, dead)
    SyncRun.objects.filter(pk=dead.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    refused = sync(source)
    # the lock holder is stale, so a new run takes over; close_stale_runs closes what is left
    assert refused.status == SyncRun.Status.SUCCEEDED
    dead.refresh_from_db()
    assert dead.status == SyncRun.Status.FAILED

    other = SyncRun.objects.create(source=source, status=SyncRun.Status.RUNNING, started_at=timezone.now())
    assert lock.acquire(source, other)
    assert services.close_stale_runs() == 0  # fresh heartbeat-less run younger than the limit
    SyncRun.objects.filter(pk=other.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert services.close_stale_runs() == 1
    other.refresh_from_db()
    assert other.status == SyncRun.Status.FAILED and "heartbeat" in other.message
    assert SyncSource.objects.get(pk=source.pk).lock_run_id is None


@pytest.mark.django_db
def test_second_run_while_one_runs_is_refused(sim, source):
    holder = SyncRun.objects.create(source=source, status=SyncRun.Status.RUNNING, started_at=timezone.now(),
                                    heartbeat_at=timezone.now())
    assert lock.acquire(source, holder)
    run = sync(source)
    assert run.status == SyncRun.Status.CANCELLED
    assert f"#{holder.pk}" in run.message
    assert ExternalUser.objects.count() == 0
    lock.release(source, holder)
    assert sync(source).status == SyncRun.Status.SUCCEEDED


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
def test_two_concurrent_runs_exactly_one_applies(sim, require_postgres):
    source = source_for(sim)
    sim.faults.delay(0.5, path="department/list")  # the winner is surely still running when the other asks
    results: list[SyncRun] = []
    barrier = threading.Barrier(2)

    def worker():
        try:
            barrier.wait()
            results.append(services.run_full_sync(SyncSource.objects.get(pk=source.pk)))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(r.status for r in results)
    assert statuses == [SyncRun.Status.CANCELLED, SyncRun.Status.SUCCEEDED]
    assert ExternalUser.objects.filter(source=source).count() == 40
    assert SyncRunChange.objects.filter(action="created", object_type="user").count() == 40


@pytest.mark.django_db
def test_a_failing_signal_receiver_never_breaks_a_run(sim, source, caplog):
    from wecom_sync.signals import sync_finished, user_created

    calls = []

    def broken(**kwargs):
        calls.append(kwargs["user"].pk if "user" in kwargs else None)
        raise RuntimeError("receiver bug")

    user_created.connect(broken)
    sync_finished.connect(broken)
    try:
        run = sync(source)
    finally:
        user_created.disconnect(broken)
        sync_finished.disconnect(broken)
    assert run.status == SyncRun.Status.SUCCEEDED
    assert len(calls) == len(sim.org.users) + 1  # every user_created, then sync_finished
    assert_mirrors(source, sim)
    assert "wecom_sync.signal.receiver_failed" in caplog.text
