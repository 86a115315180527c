"""Issue 11, point 1: directory data can never take over an account the sync did not create.

Real simulator over HTTP, real callback endpoint (live server) for the events.
"""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import override_settings

from tests.factories import AES_KEY, TOKEN, make_source
from wecom_sync.models import ExternalUser, SyncRun, SyncRunChange, SyncSource
from wecom_sync.services import run_full_sync
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()


def wecom_settings(**values):
    return override_settings(WECOM_SYNC={**django_settings.WECOM_SYNC, **values})


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=8, departments=3, seed=11)) as simulator:
        yield simulator


def _members(sim) -> list[dict]:
    return sorted((u for u in sim.org.users.values() if u.get("status") == 1), key=lambda u: u["userid"])


def _snapshot(user) -> tuple:
    user.refresh_from_db()
    return (user.username, user.email, user.is_active, user.is_staff, user.is_superuser, user.password,
            user.first_name, user.last_name)


def _admins():
    root = User.objects.create_superuser("root", "boss@corp.example", "pw-root-123")
    staff = User.objects.create_user("helpdesk", "helpdesk@corp.example", "pw-staff-123", is_staff=True)
    return root, staff


def _assert_untouched(accounts: dict) -> None:
    for user, before in accounts.items():
        assert _snapshot(user) == before, user.username
        assert not ExternalUser.objects.filter(user=user).exists()


def _source(sim, **overrides) -> SyncSource:
    values = dict(corp_id=sim.corp_id, secret=sim.app_secret, contact_sync_secret="", api_base_url=sim.base_url,
                  agent_id=sim.agent_id)
    values.update(overrides)
    return make_source(**values)


def _events_on(sim, source, live_server) -> None:
    sim.set_callback(live_server.url + source.get_callback_path(), TOKEN, AES_KEY)


@pytest.mark.parametrize("removal_policy", ["deactivate", "delete"])
def test_member_with_an_admins_email_never_takes_over_the_account(sim, live_server, removal_policy):
    root, staff = _admins()
    first, second = _members(sim)[:2]
    sim.update_user(first["userid"], deliver=False, email="boss@corp.example", biz_mail="")
    sim.update_user(second["userid"], deliver=False, email="HelpDesk@corp.example", biz_mail="")
    accounts = {root: _snapshot(root), staff: _snapshot(staff)}
    source = _source(sim, removal_policy=removal_policy)

    run = run_full_sync(source)
    run.refresh_from_db()
    _assert_untouched(accounts)
    skipped = {c.external_id: c for c in run.changes.filter(action=SyncRunChange.Action.SKIPPED)}
    assert set(skipped) == {first["userid"], second["userid"]}
    assert all("administrator" in c.error for c in skipped.values())
    # never a silent second account carrying the admin's email
    assert User.objects.filter(email__iexact="boss@corp.example").count() == 1
    assert User.objects.filter(email__iexact="helpdesk@corp.example").count() == 1
    assert run.status in (SyncRun.Status.SUCCEEDED, SyncRun.Status.PARTIAL)

    # the members change their email and status in WeCom; a re-sync still leaves the admins alone
    sim.update_user(first["userid"], deliver=False, email="attacker@evil.example", status=5)
    sim.update_user(second["userid"], deliver=False, status=2)
    run_full_sync(source)
    _assert_untouched(accounts)

    # events: update_user then delete_user
    _events_on(sim, source, live_server)
    sim.update_user(first["userid"], email="boss@corp.example", status=1)
    sim.update_user(second["userid"], name="Eve")
    assert [code for _x, code in sim.deliveries] == [200, 200]
    _assert_untouched(accounts)
    sim.delete_user(first["userid"])
    sim.delete_user(second["userid"])
    _assert_untouched(accounts)
    assert root.is_active and staff.is_active


def test_link_by_username_never_takes_over_an_admin(sim, live_server):
    root, staff = _admins()
    member = _members(sim)[0]
    sim.add_user({"userid": "root", "name": "Mallory", "department": [1], "email": "m@evil.example"},
                 deliver=False)
    sim.add_user({"userid": "HelpDesk", "name": "Trudy", "department": [1]}, deliver=False)
    accounts = {root: _snapshot(root), staff: _snapshot(staff)}
    with wecom_settings(LINK_EXISTING_BY=["username"]):
        source = _source(sim, removal_policy="delete")
        run_full_sync(source)
        _assert_untouched(accounts)
        assert not ExternalUser.objects.filter(source=source, userid_key__in=["root"]).exclude(user=None).exists()
        sim.update_user("root", deliver=False, email="other@evil.example", status=2)
        run_full_sync(source)
        _assert_untouched(accounts)
        _events_on(sim, source, live_server)
        sim.update_user("root", name="Mallory II")
        sim.delete_user("root")
        sim.delete_user("HelpDesk")
        _assert_untouched(accounts)
    assert member  # the ordinary members were still synced
    assert ExternalUser.objects.filter(source=source, userid_key=member["userid"].lower()).exclude(user=None).exists()


def test_linked_account_keeps_login_and_email_and_is_never_deleted(sim, live_server):
    member = _members(sim)[0]
    sim.update_user(member["userid"], deliver=False, email="ada@corp.example", biz_mail="")
    ada = User.objects.create_user("ada.local", "Ada@corp.example", "pw-ada-123")
    source = _source(sim, removal_policy="delete")
    run_full_sync(source)
    ext = ExternalUser.objects.get(source=source, userid_key=member["userid"].lower())
    assert (ext.user_id, ext.account_origin) == (ada.pk, ExternalUser.AccountOrigin.LINKED)
    ada.refresh_from_db()
    assert (ada.username, ada.email) == ("ada.local", "Ada@corp.example")

    sim.update_user(member["userid"], deliver=False, email="moved@else.example", name="Ada King")
    run_full_sync(source)
    ada.refresh_from_db()
    assert (ada.username, ada.email, ada.first_name) == ("ada.local", "Ada@corp.example", "Ada")

    with wecom_settings(LINKED_ACCOUNT_FIELDS=["email"]):
        sim.update_user(member["userid"], deliver=False, email="ada.new@corp.example")
        run_full_sync(source)
    ada.refresh_from_db()
    assert (ada.username, ada.email) == ("ada.local", "ada.new@corp.example")

    _events_on(sim, source, live_server)
    sim.delete_user(member["userid"])
    ada.refresh_from_db()  # the "delete" policy deactivates a linked account instead of deleting it
    assert not ada.is_active
    ext.refresh_from_db()
    assert ext.is_removed


def test_orphan_relink_sets_the_account_origin(sim):
    member = _members(sim)[0]
    source = _source(sim)
    run_full_sync(source)
    ext = ExternalUser.objects.get(source=source, userid_key=member["userid"].lower())
    ext.user.delete()
    ext.refresh_from_db()
    ExternalUser.objects.filter(pk=ext.pk).update(account_origin=ExternalUser.AccountOrigin.MANUAL)
    email = (member.get("biz_mail") or member.get("email") or "x@corp.example")
    sim.update_user(member["userid"], deliver=False, name="Back Again", email=email)
    existing = User.objects.create_user("prior", email, "pw-prior-123")
    run_full_sync(source)
    ext.refresh_from_db()
    assert ext.user_id == existing.pk
    assert ext.account_origin == ExternalUser.AccountOrigin.LINKED
