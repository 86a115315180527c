"""Tags (标签) against the simulator over HTTP: full sync, update_tag events, removal, and mirrored groups."""

from __future__ import annotations

import pytest
import requests
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import override_settings
from django.urls import reverse

from tests.factories import AES_KEY, TOKEN, make_source
from wecom_sync.models import CallbackEvent, ExternalTag, ExternalUser, SyncRun, SyncRunChange
from wecom_sync.services import run_full_sync
from wecom_sync.simulator import WeComSimulator, generate_organisation
from wecom_sync.sync.tags import desired_members

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()
TAG_PATHS = ("/cgi-bin/tag/list", "/cgi-bin/tag/get")


def wecom_settings(**values):
    return override_settings(WECOM_SYNC={**django_settings.WECOM_SYNC, **values})


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=30, departments=6, seed=11)) as simulator:
        yield simulator


@pytest.fixture
def source(sim):
    return make_source(corp_id=sim.corp_id, secret=sim.app_secret, contact_sync_secret="",
                       api_base_url=sim.base_url, agent_id=sim.agent_id)


@pytest.fixture
def mirror_tags():
    with wecom_settings(MIRROR_TAGS=True):
        yield


def sync(source, expected=SyncRun.Status.SUCCEEDED) -> SyncRun:
    run = run_full_sync(source, trigger="api")
    assert run.status == expected, run.message
    return run


def accounts_of(source, userids) -> set[int]:
    """The Django user pks of these WeCom userids."""
    keys = [u.lower() for u in userids]
    return set(ExternalUser.objects.filter(source=source, userid_key__in=keys, is_removed=False)
               .values_list("user_id", flat=True))


def group_members(tag: ExternalTag) -> set[int]:
    return set(tag.group.user_set.values_list("pk", flat=True))


def assert_tags_mirror(source, sim) -> None:
    """Every simulator tag is mirrored with its members and departments; no other tag is live."""
    local = {t.tag_id: t for t in ExternalTag.objects.filter(source=source, is_removed=False)}
    assert set(local) == set(sim.org.tags)
    for tag_id, tag in sim.org.tags.items():
        row = local[tag_id]
        assert row.name == tag["tagname"]
        assert {u.userid for u in row.users.all()} == set(tag["userlist"])
        assert {d.department_id for d in row.departments.all()} == set(tag["partylist"])


# -- full sync -------------------------------------------------------------------------------------------


def test_sync_tags_off_makes_no_tag_call(sim, source):
    run = sync(source)
    assert not any(sim.calls[p] for p in TAG_PATHS)
    assert not ExternalTag.objects.exists()
    assert "remote_tags" not in run.counters


def test_full_sync_mirrors_tags_with_members_and_departments(sim, source):
    with wecom_settings(SYNC_TAGS=True):
        run = sync(source)
    assert sim.calls["/cgi-bin/tag/list"] == 1
    assert sim.calls["/cgi-bin/tag/get"] == len(sim.org.tags)
    assert_tags_mirror(source, sim)
    assert run.counters["tags_created"] == len(sim.org.tags)
    assert run.counters["remote_tags"] == len(sim.org.tags)
    assert SyncRunChange.objects.filter(run=run, object_type="tag", action="created").count() == len(sim.org.tags)
    assert not Group.objects.exists()  # SYNC_TAGS alone does not mirror groups
    # A second run changes nothing.
    with wecom_settings(SYNC_TAGS=True):
        again = sync(source)
    assert again.counters["tags_unchanged"] == len(sim.org.tags)
    assert not SyncRunChange.objects.filter(run=again, object_type="tag").exists()


def test_mirror_tags_makes_groups_of_members_and_department_subtrees(sim, source, mirror_tags):
    # A department with a sub-department: the tag stands for both departments' members.
    parent = next(d for d in sorted(sim.org.departments) if d != 1 and sim.org.children(d))
    child = sim.org.children(parent)[0]
    assert sim.org.members(child), "the seed gives the sub-department members"
    tag_id = sim.add_tag("财务审批-测试", users=[sorted(sim.org.users)[0]], departments=[parent])
    run = sync(source)
    assert run.counters["tag_groups_created"] == len(sim.org.tags)
    for tid in sim.org.tags:
        tag = ExternalTag.objects.get(source=source, tag_id=tid)
        assert tag.group is not None and tag.group.name == sim.org.tags[tid]["tagname"]
        assert group_members(tag) == accounts_of(source, sim.tag_members(tid))
    tag = ExternalTag.objects.get(source=source, tag_id=tag_id)
    assert accounts_of(source, sim.org.members(child)) <= group_members(tag)


def test_tag_changes_reach_the_group_and_manual_members_survive(sim, source, mirror_tags):
    sync(source)
    tag = ExternalTag.objects.get(source=source, tag_id=2)  # members only
    listed = sim.org.tags[2]["userlist"]
    manual = User.objects.create_user("manual-member")
    tag.group.user_set.add(manual)
    # An account the tag also lists, added by hand before the sync put it there: the sync did not add it.
    leaving, staying = listed[0], listed[1]
    sim.update_tag(2, remove_users=[leaving], add_users=[u for u in sorted(sim.org.users) if u not in listed][:1])
    run = sync(source)
    tag.refresh_from_db()
    assert group_members(tag) == accounts_of(source, sim.tag_members(2)) | {manual.pk}
    assert run.counters["tag_group_members_removed"] == 1
    assert accounts_of(source, [staying]) <= group_members(tag)
    assert not accounts_of(source, [leaving]) & group_members(tag)


def test_member_added_by_hand_before_the_tag_is_never_taken_out(sim, source, mirror_tags):
    sync(source)
    tag = ExternalTag.objects.get(source=source, tag_id=2)
    outsider = next(u for u in sorted(sim.org.users) if u not in sim.org.tags[2]["userlist"])
    account = ExternalUser.objects.get(source=source, userid_key=outsider.lower()).user
    tag.group.user_set.add(account)  # by hand, before WeCom tags them
    sim.update_tag(2, add_users=[outsider], deliver=False)
    sync(source)
    sim.update_tag(2, remove_users=[outsider], deliver=False)
    sync(source)
    assert account.pk in group_members(tag)  # it was the admin's, not the sync's


def test_deleted_tag_is_removed_and_its_group_emptied_of_synced_members(sim, source, mirror_tags):
    sync(source)
    tag = ExternalTag.objects.get(source=source, tag_id=1)
    manual = User.objects.create_user("kept-by-hand")
    tag.group.user_set.add(manual)
    sim.delete_tag(1)
    run = sync(source)
    tag.refresh_from_db()
    assert tag.is_removed and tag.removed_at is not None
    assert not tag.users.exists() and not tag.departments.exists()
    assert run.counters["tags_removed"] == 1
    assert group_members(tag) == {manual.pk}  # the group stays, with what the admin put in it
    # The tag comes back: same row, same group, members again.
    sim.add_tag("财务审批", tag_id=1, users=sorted(sim.org.users)[:2])
    run = sync(source)
    tag.refresh_from_db()
    assert not tag.is_removed and run.counters["tags_reactivated"] == 1
    assert group_members(tag) == accounts_of(source, sorted(sim.org.users)[:2]) | {manual.pk}


def test_tag_get_failure_leaves_tags_intact_and_run_partial(sim, source, mirror_tags):
    sync(source)
    before = {t.tag_id: set(t.users.values_list("pk", flat=True)) for t in ExternalTag.objects.all()}
    sim.delete_tag(4)  # would be removed by a complete fetch
    sim.update_tag(1, remove_users=sim.org.tags[1]["userlist"][:1], deliver=False)
    sim.faults.fail_next(-1, count=50, path="tag/get")  # -1 is retried, then gives up
    run = sync(source, expected=SyncRun.Status.PARTIAL)
    assert run.counters["tags_unreadable"] >= 1
    assert "tag" in run.message
    assert not ExternalTag.objects.filter(is_removed=True).exists()
    after = {t.tag_id: set(t.users.values_list("pk", flat=True)) for t in ExternalTag.objects.all()}
    assert after == before


def test_tag_list_failure_changes_no_tag_and_does_not_block_user_removal(sim, source):
    with wecom_settings(SYNC_TAGS=True):
        sync(source)
        gone = next(u for u, data in sorted(sim.org.users.items()) if data["status"] == 1)
        sim.delete_user(gone)
        sim.delete_tag(3)
        sim.faults.fail_next(48002, path="tag/list")
        run = sync(source, expected=SyncRun.Status.PARTIAL)
    assert ExternalUser.objects.get(source=source, userid_key=gone.lower()).is_removed
    assert not ExternalTag.objects.get(source=source, tag_id=3).is_removed
    assert run.snapshot_complete  # the directory itself was complete


def test_dry_run_plans_tags_without_writing(sim, source):
    with wecom_settings(MIRROR_TAGS=True):
        run = run_full_sync(source, dry_run=True)
    assert run.counters["tags_created"] == len(sim.org.tags)
    assert not ExternalTag.objects.exists() and not Group.objects.exists()
    assert not SyncRunChange.objects.filter(run=run, object_type="tag", applied=True).exists()


def test_tag_group_never_takes_over_an_existing_group(sim, source, mirror_tags):
    existing = Group.objects.create(name=sim.org.tags[1]["tagname"])
    sync(source)
    tag = ExternalTag.objects.get(source=source, tag_id=1)
    assert tag.group_id != existing.pk
    assert tag.group.name == f"{existing.name} ({source.slug}-tag-1)"
    assert not existing.user_set.exists()


# -- events ----------------------------------------------------------------------------------------------


@pytest.fixture
def live(sim, source, live_server):
    """A synced source whose events the simulator delivers to the live server."""
    with wecom_settings(MIRROR_TAGS=True):
        sync(source)
        sim.set_callback(live_server.url + source.get_callback_path(), TOKEN, AES_KEY)
        sim.reset_calls()
        yield source


def last_event() -> CallbackEvent:
    return CallbackEvent.objects.order_by("-pk").first()


def test_update_tag_event_rereads_the_tag(sim, live):
    tag = ExternalTag.objects.get(source=live, tag_id=2)
    newcomer = next(u for u in sorted(sim.org.users) if u not in sim.org.tags[2]["userlist"])
    leaving = sim.org.tags[2]["userlist"][0]
    sim.update_tag(2, name="值班工程师（新）", add_users=[newcomer], remove_users=[leaving])
    assert sim.deliveries[-1][1] == 200
    event = last_event()
    assert (event.change_type, event.object_id, event.status) == ("update_tag", "2", CallbackEvent.Status.APPLIED)
    assert sim.calls["/cgi-bin/tag/get"] == 1
    tag.refresh_from_db()
    assert tag.name == "值班工程师（新）" and tag.group.name == "值班工程师（新）"
    assert {u.userid for u in tag.users.all()} == set(sim.org.tags[2]["userlist"])
    assert group_members(tag) == accounts_of(live, sim.tag_members(2))
    assert event.run.counters["tags_updated"] == 1


def test_update_tag_with_departments_event(sim, live):
    tag = ExternalTag.objects.get(source=live, tag_id=3)
    dept = next(d for d in sorted(sim.org.departments) if d not in sim.org.tags[3]["partylist"] and d != 1
                and sim.org.members(d))
    sim.update_tag(3, add_departments=[dept])
    assert last_event().status == CallbackEvent.Status.APPLIED
    assert dept in set(tag.departments.values_list("department_id", flat=True))
    assert group_members(tag) == accounts_of(live, sim.tag_members(3))


def test_delete_tag_event_removes_the_tag(sim, live):
    sim.delete_tag(4, event=True)
    assert last_event().change_type == "delete_tag" and last_event().status == CallbackEvent.Status.APPLIED
    tag = ExternalTag.objects.get(source=live, tag_id=4)
    assert tag.is_removed
    assert not group_members(tag)


def test_create_tag_event_mirrors_the_new_tag(sim, live):
    tag_id = sim.add_tag("新标签", users=sorted(sim.org.users)[:3], event=True)
    assert last_event().status == CallbackEvent.Status.APPLIED
    tag = ExternalTag.objects.get(source=live, tag_id=tag_id)
    assert group_members(tag) == accounts_of(live, sorted(sim.org.users)[:3])


def test_member_moving_into_a_tagged_department_joins_the_group(sim, live):
    tag = ExternalTag.objects.get(source=live, tag_id=3)
    dept = sim.org.tags[3]["partylist"][0]
    outsider = next(u for u, data in sorted(sim.org.users.items())
                    if not set(data["department"]) & set(sim.org.subtree(dept)) and data["status"] == 1)
    sim.move_user(outsider, [dept])
    assert last_event().status == CallbackEvent.Status.APPLIED
    assert accounts_of(live, [outsider]) <= group_members(tag)
    sim.move_user(outsider, [1])
    assert not accounts_of(live, [outsider]) & group_members(tag)


def test_tag_event_before_the_member_event_links_once_the_member_arrives(sim, live):
    tag = ExternalTag.objects.get(source=live, tag_id=2)
    xml = sim.add_user({"userid": "late.arrival", "name": "Late", "department": [1]}, deliver=False)
    sim.update_tag(2, add_users=["late.arrival"])  # delivered first: the member is not mirrored yet
    assert not tag.users.filter(userid="late.arrival").exists()
    body, params = sim.build_callback(xml)
    response = requests.post(sim._callback.url, params=params, data=body.encode(), timeout=10)
    assert response.status_code == 200
    assert tag.users.filter(userid="late.arrival").exists()
    assert accounts_of(live, ["late.arrival"]) <= group_members(tag)


def test_tag_events_are_ignored_without_sync_tags(sim, source, live_server):
    sync(source)
    sim.set_callback(live_server.url + source.get_callback_path(), TOKEN, AES_KEY)
    sim.update_tag(1, add_users=[sorted(sim.org.users)[-1]])
    assert last_event().status == CallbackEvent.Status.IGNORED
    assert sim.calls["/cgi-bin/tag/get"] == 0


def test_desired_members_excludes_removed_members(sim, source, mirror_tags):
    sync(source)
    tag = ExternalTag.objects.get(source=source, tag_id=2)
    userid = sim.org.tags[2]["userlist"][0]
    account = accounts_of(source, [userid])
    assert account <= desired_members(source, [tag])[tag.pk]
    ExternalUser.objects.filter(source=source, userid_key=userid.lower()).update(is_removed=True)
    assert not account & desired_members(source, [tag])[tag.pk]


def test_tags_admin_lists_tags_with_their_group(sim, source, mirror_tags, admin_client):
    sync(source)
    page = admin_client.get(reverse("admin:wecom_sync_externaltag_changelist"))
    assert page.status_code == 200
    text = page.content.decode()
    for tag in sim.org.tags.values():
        assert tag["tagname"] in text
    tag = ExternalTag.objects.get(source=source, tag_id=1)
    assert admin_client.get(reverse("admin:wecom_sync_externaltag_change", args=[tag.pk])).status_code == 200
    run = SyncRun.objects.filter(source=source).latest("pk")
    run_page = admin_client.get(reverse("admin:wecom_sync_syncrun_change", args=[run.pk]))
    assert "tags created" in run_page.content.decode()
