"""Sign in with WeCom checks the member's status in WeCom at sign-in, not only the mirror's (which may be stale:
events are late or lost, the next full sync is hours away). Simulator over HTTP, no sync between the change in
WeCom and the sign-in."""

from __future__ import annotations

import pytest

from tests import test_login
from wecom_sync.models import ExternalUser

pytestmark = pytest.mark.django_db

# The sign-in tests' fixtures: the simulator, its login URLs, a synced source with sign-in on.
sim, login_settings, source = test_login.sim, test_login.login_settings, test_login.source
active_userid, logged_in_as, qr_login, reason_of = (
    test_login.active_userid, test_login.logged_in_as, test_login.qr_login, test_login.reason_of,
)


def mirrored_status(source, userid: str) -> int:  # noqa: ANN001
    return ExternalUser.objects.get(source=source, userid_key=userid.lower()).status


def test_member_disabled_in_wecom_since_the_last_sync_cannot_sign_in(client, sim, source):
    userid = active_userid(sim)
    sim.set_user_status(userid, 2, deliver=False)  # no sync, no event: the mirror still says active
    response = qr_login(client, source, userid)
    assert logged_in_as(client) is None, "a member disabled in WeCom signed in on the mirror's stale status"
    assert response.status_code == 403 and reason_of(response) == "member_status"
    assert mirrored_status(source, userid) == 1, "the login path wrote the mirror"


def test_member_gone_from_wecom_at_sign_in_is_refused(client, sim, source):
    userid = active_userid(sim)
    sim.faults.fail_next(60111, path="user/get")  # deleted between getuserinfo and user/get
    response = qr_login(client, source, userid)
    assert logged_in_as(client) is None
    assert response.status_code == 403 and reason_of(response) == "member_gone"


def test_when_wecom_gives_no_answer_the_mirror_decides(client, sim, source, caplog):
    userid = active_userid(sim)
    sim.faults.http_error_next(502, count=5, path="user/get")
    with caplog.at_level("WARNING", logger="wecom_sync.login"):
        response = qr_login(client, source, userid)
    assert response.status_code == 302, response.content[:300]
    assert logged_in_as(client) == test_login.account(source, userid)
    assert any(r.getMessage() == "wecom_sync.login.status_unverified" for r in caplog.records)


def test_when_wecom_gives_no_answer_a_member_the_mirror_disabled_is_refused(client, sim, source):
    userid = active_userid(sim)
    ExternalUser.objects.filter(source=source, userid_key=userid.lower()).update(status=ExternalUser.Status.DISABLED)
    sim.faults.http_error_next(502, count=5, path="user/get")
    qr_login(client, source, userid)
    assert logged_in_as(client) is None


def test_an_active_member_still_signs_in_with_one_status_check(client, sim, source):
    userid = active_userid(sim)
    response = qr_login(client, source, userid)
    assert response.status_code == 302, response.content[:300]
    assert logged_in_as(client) == test_login.account(source, userid)
