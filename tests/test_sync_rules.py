"""The rules of DESIGN §5 on the paths issue 12 found broken: approvals, partial fetches, shared accounts,
names, parent cycles, linking. Each test drives the WeCom simulator over HTTP."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import override_settings
from django.urls import reverse

from tests.factories import simulator_source
from wecom_sync import events, services
from wecom_sync.callbacks import parse_event, store_event
from wecom_sync.exceptions import ERRCODE_HINTS
from wecom_sync.models import (
    CallbackEvent,
    ExternalDepartment,
    ExternalMembership,
    ExternalUser,
    SyncRun,
    SyncSource,
)
from wecom_sync.simulator import WeComSimulator, generate_organisation
from wecom_sync.sync import lock

User = get_user_model()
pytestmark = pytest.mark.django_db


def wecom_settings(**values):
    return override_settings(WECOM_SYNC={**django_settings.WECOM_SYNC, **values})


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=40, departments=8, seed=3)) as simulator:
        yield simulator


source_for = simulator_source


def sync(source: SyncSource, **kwargs) -> SyncRun:
    run = services.run_full_sync(source, **kwargs)
    run.refresh_from_db()
    return run


def account(source: SyncSource, userid: str):
    return ExternalUser.objects.select_related("user").get(source=source, userid_key=userid.lower()).user


def apply_event(source: SyncSource, xml: str) -> None:
    event, _created = store_event(source, parse_event(xml))
    assert events.process_event(event.pk) == CallbackEvent.Status.APPLIED


# -- point 1: an approval decides against the mirror as it is at approval time ------------------------------


def test_approval_keeps_members_restored_unchanged_after_the_hold(sim):
    source = source_for(sim, removal_threshold_count=5)
    assert sync(source).status == SyncRun.Status.SUCCEEDED
    gone = sorted(u for u, m in sim.org.users.items() if m["status"] == 1)[:20]
    payloads = {userid: dict(sim.org.users[userid]) for userid in gone}
    deletions = {userid: sim.delete_user(userid, deliver=False) for userid in gone}
    held = sync(source)
    assert held.status == SyncRun.Status.HELD
    back = gone[:6]
    for userid in back:
        # WeCom sends create_user; the re-fetched member is exactly what the mirror already holds
        apply_event(source, sim.add_user(payloads[userid], deliver=False))
    apply_event(source, deletions[gone[6]])  # removed meanwhile by its own event
    services.approve_run(held)
    held.refresh_from_db()
    assert held.status == SyncRun.Status.SUCCEEDED, held.message
    for userid in back:
        assert account(source, userid).is_active, userid
        assert not ExternalUser.objects.get(source=source, userid_key=userid.lower()).is_removed
    for userid in gone[6:]:
        assert not account(source, userid).is_active, userid
    # one row per member: the approval's own for the 14, the held row (now skipped) for the 6
    rows = list(held.changes.filter(object_type="user", external_id__in=gone).values_list("external_id", "action"))
    assert len(rows) == len(gone)
    assert sorted(u for u, a in rows if a == "deactivated") == sorted(gone[7:])
    assert sorted(u for u, a in rows if a == "skipped") == sorted([*back, gone[6]])
    assert "Already removed" in held.changes.get(external_id=gone[6]).error


def test_approval_keeps_a_department_confirmed_after_the_hold(sim):
    source = source_for(sim, removal_threshold_count=0)
    sync(source)
    leaf = next(d for d in sorted(sim.org.departments) if d != 1 and not sim.org.children(d))
    payload = dict(sim.org.departments[leaf])
    for userid in sim.org.members(leaf):
        sim.move_user(userid, [1], deliver=False)
    sim.delete_user(sorted(sim.org.users)[0], deliver=False)  # one removal: above a threshold of 0
    sim.delete_department(leaf, deliver=False)
    held = sync(source)
    assert held.status == SyncRun.Status.HELD
    assert held.changes.filter(object_type="department", external_id=str(leaf), applied=False).exists()
    apply_event(source, sim.add_department(payload, deliver=False))
    services.approve_run(held)
    assert not ExternalDepartment.objects.get(source=source, department_id=leaf).is_removed
    assert held.changes.filter(object_type="department", external_id=str(leaf)).count() == 1


# -- point 14: the held run shows every pending removal; one change row per member after approval -----------


@pytest.mark.django_db
def test_a_large_hold_shows_its_true_size_and_approval_writes_one_row_per_member(admin_client):
    with WeComSimulator(generate_organisation(users=560, departments=6, seed=5)) as big:
        source = source_for(big)
        assert sync(source).status == SyncRun.Status.SUCCEEDED
        victims = sorted(big.org.users)[:540]
        for userid in victims:
            big.delete_user(userid, deliver=False)
        held = sync(source)
    assert held.status == SyncRun.Status.HELD
    page = admin_client.get(reverse("admin:wecom_sync_syncrun_change", args=[held.pk]))
    assert page.status_code == 200
    assert "would remove 540 objects" in page.content.decode()
    services.approve_run(held)
    user_rows = held.changes.filter(object_type="user", external_id__in=victims)
    assert user_rows.count() == 540
    assert user_rows.filter(action="deactivated", applied=True).count() == 540


# -- point 13: deciding while another run holds the lock is a clear answer, never a 500 ----------------------


def test_approve_and_reject_while_another_run_holds_the_lock(sim, admin_client):
    source = source_for(sim, removal_threshold_count=1)
    sync(source)
    for userid in sorted(sim.org.users)[:5]:
        sim.delete_user(userid, deliver=False)
    held = sync(source)
    assert held.status == SyncRun.Status.HELD
    other = SyncRun.objects.create(source=source, status=SyncRun.Status.RUNNING)
    assert lock.acquire(source, other)
    with pytest.raises(services.RunStateError, match="Another sync of this source is running"):
        services.approve_run(held)
    url = reverse("admin:wecom_sync_syncrun_approve", args=[held.pk])
    response = admin_client.post(url, follow=True)
    assert response.status_code == 200
    assert "Another sync of this source is running" in response.content.decode()
    held.refresh_from_db()
    assert held.status == SyncRun.Status.HELD
    lock.release(source, other)
    services.approve_run(held)
    assert SyncRun.objects.get(pk=held.pk).status == SyncRun.Status.SUCCEEDED


def test_admin_reject_that_lost_the_race_is_a_message(sim, admin_client, monkeypatch):
    source = source_for(sim, removal_threshold_count=1)
    sync(source)
    for userid in sorted(sim.org.users)[:5]:
        sim.delete_user(userid, deliver=False)
    held = sync(source)

    def lost(run, user=None):
        raise services.RunStateError("This run was already approved or rejected.")

    monkeypatch.setattr(services, "reject_run", lost)
    response = admin_client.post(reverse("admin:wecom_sync_syncrun_reject", args=[held.pk]), follow=True)
    assert response.status_code == 200
    assert "already approved or rejected" in response.content.decode()


# -- point 2: a partial fetch removes no membership in a department it did not read ------------------------


def test_partial_fetch_keeps_memberships_in_departments_it_could_not_read(sim):
    source = source_for(sim, fetch_strategy="contact_sync")
    depts = sorted(d for d in sim.org.departments if d != 1 and not sim.org.children(d))
    seen_dept, hidden = depts[0], depts[1:]
    members = sorted(sim.org.users)[:4]
    for userid in members:
        sim.move_user(userid, [seen_dept, hidden[0]], deliver=False)
    assert sync(source).status == SyncRun.Status.SUCCEEDED
    before = set(ExternalMembership.objects.filter(user__source=source).values_list("user_id", "department_id"))
    inactive = set(User.objects.filter(is_active=False).values_list("pk", flat=True))
    sim.set_app_scope([seen_dept])
    run = sync(source)
    assert run.status == SyncRun.Status.PARTIAL, run.message
    after = set(ExternalMembership.objects.filter(user__source=source).values_list("user_id", "department_id"))
    assert before <= after
    assert not run.changes.filter(action="moved").exists()
    assert "nothing was removed" in run.message
    hint = ERRCODE_HINTS[60011]
    assert run.message.count(hint) == 1, run.message
    assert set(User.objects.filter(is_active=False).values_list("pk", flat=True)) == inactive


# -- point 4: an account shared by two sources stays active while one keeps it so --------------------------


@pytest.fixture
def two_corps():
    with WeComSimulator(generate_organisation(users=10, departments=3, seed=11)) as a, \
            WeComSimulator(generate_organisation(users=10, departments=3, seed=12)) as b:
        yield a, b


def _shared_member(a: WeComSimulator, b: WeComSimulator) -> str:
    a.add_user({"userid": "shared.one", "name": "Shared One", "email": "shared@example.com"}, deliver=False)
    b.add_user({"userid": "SharedOne", "name": "Shared One", "email": "shared@example.com"}, deliver=False)
    return "shared.one"


@pytest.mark.parametrize("how", ["delete", "exit"])
def test_a_shared_account_stays_active_while_another_source_lists_it(two_corps, how):
    a, b = two_corps
    _shared_member(a, b)
    src_a, src_b = source_for(a), source_for(b)
    with wecom_settings(LINK_EXISTING_BY=["email"]):
        sync(src_a)
        sync(src_b)
        user = account(src_a, "shared.one")
        assert account(src_b, "SharedOne") == user
        if how == "delete":
            a.delete_user("shared.one", deliver=False)
        else:
            a.set_user_status("shared.one", 5, deliver=False)
        run = sync(src_a)
    assert run.status == SyncRun.Status.SUCCEEDED, run.message
    user.refresh_from_db()
    assert user.is_active
    assert not run.changes.filter(external_id="shared.one", action="deactivated").exists()


def test_the_other_sources_next_sync_heals_a_shared_account(two_corps):
    a, b = two_corps
    _shared_member(a, b)
    src_a, src_b = source_for(a), source_for(b)
    with wecom_settings(LINK_EXISTING_BY=["email"]):
        sync(src_a)
        sync(src_b)
        user = account(src_a, "shared.one")
        a.delete_user("shared.one", deliver=False)
        sync(src_a)
        # as an older version left it: deactivated by source A although B still lists the member
        User.objects.filter(pk=user.pk).update(is_active=False)
        run = sync(src_b)
    user.refresh_from_db()
    assert user.is_active
    assert run.changes.filter(external_id="SharedOne", action="reactivated").count() == 1
    # nothing more to heal: the next sync is a no-op
    with wecom_settings(LINK_EXISTING_BY=["email"]):
        again = sync(src_b)
    assert not again.changes.exists()


# -- point 6: an empty department name never blanks the local one ------------------------------------------


def test_an_empty_department_name_keeps_the_local_name_and_group(sim):
    source = source_for(sim)
    with wecom_settings(MIRROR_GROUPS=True):
        sync(source)
        dept_id = next(d for d in sorted(sim.org.departments) if d != 1)
        name = sim.org.departments[dept_id]["name"]
        group = ExternalDepartment.objects.get(source=source, department_id=dept_id).group
        assert group is not None and group.name == name
        sim.update_department(dept_id, name="", deliver=False)
        run = sync(source)
    assert run.status == SyncRun.Status.SUCCEEDED
    assert ExternalDepartment.objects.get(source=source, department_id=dept_id).name == name
    assert Group.objects.get(pk=group.pk).name == name
    assert not run.changes.filter(object_type="department", fields__has_key="name").exists()


# -- point 8: a parent cycle is broken like an orphan, reported, and the run is partial ---------------------


def _cycle(sim: WeComSimulator) -> tuple[int, int]:
    a, b = sorted(d for d in sim.org.departments if d != 1)[:2]
    sim.org.departments[a]["parentid"] = b
    sim.org.departments[b]["parentid"] = a
    sim.org.invalidate()
    return a, b


@pytest.mark.parametrize("strategy", ["app", "contact_sync"])
@pytest.mark.parametrize("first", [True, False])
def test_a_parent_cycle_hangs_under_the_root_and_ends_partial(sim, strategy, first):
    source = source_for(sim, fetch_strategy=strategy)
    if not first:
        sync(source)
    a, b = _cycle(sim)
    run = sync(source)
    assert run.status == SyncRun.Status.PARTIAL, run.message
    failed = run.changes.filter(object_type="department", action="failed")
    assert failed.count() == 1 and failed[0].external_id == str(a)
    assert "cycle" in failed[0].error
    depts = {d.department_id: d for d in ExternalDepartment.objects.filter(source=source)}
    assert not depts[a].is_removed and not depts[b].is_removed
    for dept in depts.values():
        seen, current = set(), dept
        while current.parent_id is not None:
            assert current.pk not in seen, f"local cycle through {dept.department_id}"
            seen.add(current.pk)
            current = current.parent
        assert current.department_id == 1
    assert depts[a].parent.department_id == 1 and depts[b].parent.department_id == a
    again = sync(source)
    assert again.status == SyncRun.Status.PARTIAL
    assert list(again.changes.values_list("action", flat=True)) == ["failed"]


# -- point 10: linking by username ignores case ------------------------------------------------------------


def test_link_by_username_is_case_insensitive(sim):
    userid = next(u for u in sorted(sim.org.users) if u != u.upper())
    existing = User.objects.create_user(userid.upper(), password="x")
    users_before = User.objects.count()
    source = source_for(sim)
    with wecom_settings(LINK_EXISTING_BY=["username"]):
        run = sync(source)
    assert run.status == SyncRun.Status.SUCCEEDED, run.message
    ext = ExternalUser.objects.get(source=source, userid_key=userid.lower())
    assert ext.user_id == existing.pk
    assert User.objects.count() == users_before + len(sim.org.users) - 1


def test_link_by_username_reports_ambiguity_across_case(sim):
    userid = next(u for u in sorted(sim.org.users) if u != u.upper())
    User.objects.create_user(userid.upper(), password="x")
    User.objects.create_user(userid.lower(), password="x")
    source = source_for(sim)
    with wecom_settings(LINK_EXISTING_BY=["username"]):
        run = sync(source)
    failed = run.changes.get(external_id=userid, action="failed")
    assert "2 existing users" in failed.error


# -- point 11: what is stored is what is compared ------------------------------------------------------------


def test_a_name_longer_than_its_column_is_not_rewritten_every_sync(sim):
    source = source_for(sim)
    sync(source)
    dept_id = next(d for d in sorted(sim.org.departments) if d != 1)
    sim.update_department(dept_id, name="部" * 300, name_en="D" * 300, deliver=False)
    first = sync(source)
    assert first.changes.filter(object_type="department", external_id=str(dept_id)).count() == 1
    stored = ExternalDepartment.objects.get(source=source, department_id=dept_id)
    assert stored.name == "部" * 255 and stored.name_en == "D" * 255
    second = sync(source)
    assert not second.changes.exists()
    assert second.counters.get("departments_updated", 0) == 0
