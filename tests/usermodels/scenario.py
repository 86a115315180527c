"""One user-model variant through a first sync, a sync after changes and a no-op (run by test_user_models.py).

Not collected by the main suite (its name does not start with ``test_``): it needs its variant's
AUTH_USER_MODEL, set by ``tests.usermodels.settings`` from ``USERMODEL_VARIANT``.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from tests.factories import make_source
from wecom_sync import services
from wecom_sync.models import ExternalMembership, ExternalUser, SyncRun, SyncSource
from wecom_sync.simulator import WeComSimulator, generate_organisation

VARIANT = getattr(settings, "VARIANT", "default")
User = get_user_model()
LOGIN = User.USERNAME_FIELD
MIRROR = {**settings.WECOM_SYNC, "MIRROR_GROUPS": True}


def sync(source: SyncSource) -> SyncRun:
    run = services.run_full_sync(source)
    run.refresh_from_db()
    return run


def accounts(source: SyncSource) -> dict[str, object]:
    """userid key -> the mapped account, read fresh through the ORM."""
    rows = ExternalUser.objects.filter(source=source).values_list("userid_key", "user_id")
    users = User._default_manager.in_bulk([pk for _key, pk in rows])
    return {key: users[pk] for key, pk in rows}


def active_status(status: int) -> bool:
    return status in (1, 4)


def check_mirror(source: SyncSource, sim: WeComSimulator) -> None:
    mapped = accounts(source)
    live = {u.lower(): m for u, m in sim.org.users.items()}
    for key, member in live.items():
        user = mapped[key]
        assert user.is_active == active_status(member["status"]), (VARIANT, key)
        first = member["name"].rpartition(" ")[0] or member["name"]
        assert user.first_name == first[:150], (VARIANT, key)
    for key in set(mapped) - set(live):
        assert not mapped[key].is_active, (VARIANT, key, "left but active")
    for user in mapped.values():
        assert getattr(user, LOGIN), (VARIANT, "empty login")


@pytest.mark.django_db
def test_first_sync_changes_and_no_op(settings):  # noqa: ANN001
    settings.WECOM_SYNC = MIRROR
    with WeComSimulator(generate_organisation(users=30, departments=5, seed=21)) as sim:
        source = make_source(api_base_url=sim.base_url, corp_id=sim.corp_id, secret=sim.app_secret,
                             contact_sync_secret=sim.contact_sync_secret, agent_id=sim.agent_id)

        # 1. first sync
        first = sync(source)
        assert first.status == SyncRun.Status.SUCCEEDED, first.message
        assert first.counters["users_created"] == 30
        assert not first.changes.filter(action="failed").exists()
        check_mirror(source, sim)
        before = accounts(source)
        logins = {key: getattr(user, LOGIN) for key, user in before.items()}
        if VARIANT == "email_login":
            for userid, member in sim.org.users.items():
                email = member.get("biz_mail") or member.get("email")
                if email:
                    assert logins[userid.lower()] == email, "the login of an email model is the email"
        elif LOGIN == "username":
            assert logins == {u.lower(): u for u in sim.org.users}
        if VARIANT == "required_fields":
            assert all(u.employee_number and u.badge.startswith("WC-") for u in before.values())
        if VARIANT == "db_default":
            assert all(u.level == 3 and u.provisioned_at is not None for u in before.values())
        if VARIANT == "generated":
            for user in before.values():
                assert user.display_name == f"{user.first_name} {user.last_name}"

        # 2. changes: a name, an email, a userid rename, a move, one who leaves
        active = sorted(u for u, m in sim.org.users.items() if m["status"] == 1)
        renamed, moved, leaver, new_name, new_mail = active[:5]
        leaver_payload = dict(sim.org.users[leaver])
        other_dept = next(d for d in sorted(sim.org.departments) if d not in sim.org.users[moved]["department"])
        sim.update_user(new_name, name="Renamed Person", deliver=False)
        sim.update_user(new_mail, email="changed.address@example.org", biz_mail="", deliver=False)
        sim.rename_userid(renamed, renamed + ".new", deliver=False)
        sim.move_user(moved, [other_dept], deliver=False)
        sim.delete_user(leaver, deliver=False)
        second = sync(source)
        assert second.status == SyncRun.Status.SUCCEEDED, second.message
        assert not second.changes.filter(action="failed").exists()
        after = accounts(source)
        assert after[(renamed + ".new").lower()].pk == before[renamed.lower()].pk, "a renamed member keeps the account"
        assert not after[leaver.lower()].is_active, "a member who left is deactivated"
        assert after[new_name.lower()].first_name == "Renamed"
        ext_moved = ExternalUser.objects.get(source=source, userid_key=moved.lower())
        assert set(ExternalMembership.objects.filter(user=ext_moved).values_list(
            "department__department_id", flat=True)) == {other_dept}
        for key, login in logins.items():
            now = after.get(key) or after[(renamed + ".new").lower()]
            assert getattr(now, LOGIN) == login, (VARIANT, key, "the sync rewrote a login")
        if VARIANT != "email_login":
            assert after[new_mail.lower()].email == "changed.address@example.org"
        if VARIANT == "generated":
            user = User._default_manager.get(pk=after[new_name.lower()].pk)
            assert user.display_name.startswith("Renamed")
        check_mirror(source, sim)

        # 3. rehire: the member who left comes back, on the same account
        sim.add_user(leaver_payload, deliver=False)
        third = sync(source)
        assert third.status == SyncRun.Status.SUCCEEDED, third.message
        rehired = accounts(source)[leaver.lower()]
        assert rehired.pk == before[leaver.lower()].pk and rehired.is_active
        check_mirror(source, sim)

        # 4. no-op
        users_before = User._default_manager.count()
        noop = sync(source)
        assert noop.status == SyncRun.Status.SUCCEEDED, noop.message
        assert not noop.changes.exists(), list(noop.changes.values_list("external_id", "action", "fields"))
        assert User._default_manager.count() == users_before
