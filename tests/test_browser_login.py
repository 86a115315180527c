"""Sign in with WeCom in real headless Chromium: the admin login page's button, the simulator's web-login page,
and back to the admin index as the mapped (staff) member."""

from __future__ import annotations

import pytest

from tests.factories import make_source
from wecom_sync import services
from wecom_sync.models import ExternalUser, SyncRun
from wecom_sync.simulator import WeComSimulator, generate_organisation
from wecom_sync.simulator.login import AUTHORIZE_PATH, WEB_LOGIN_PATH

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=20, departments=5, seed=5)) as simulator:
        yield simulator


def test_admin_login_button_signs_a_staff_member_in_through_the_web_login(page, live_server, sim, settings):
    settings.WECOM_SYNC = {
        **settings.WECOM_SYNC,
        "OAUTH_AUTHORIZE_URL": sim.base_url + AUTHORIZE_PATH,
        "WEB_LOGIN_URL": sim.base_url + WEB_LOGIN_PATH,
    }
    source = make_source(
        slug="acme", name="Acme", api_base_url=sim.base_url, corp_id=sim.corp_id, agent_id=sim.agent_id,
        secret=sim.app_secret, contact_sync_secret="", login_enabled=True,
    )
    assert services.run_full_sync(source).status == SyncRun.Status.SUCCEEDED
    userid = next(u for u in sorted(sim.org.users) if sim.org.users[u].get("status") == 1)
    user = ExternalUser.objects.get(source=source, userid_key=userid.lower()).user
    user.is_staff = True
    user.save()

    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.click("#wecom-login-acme")
    page.wait_for_selector("#sim-login-form")
    assert page.url.startswith(sim.base_url + WEB_LOGIN_PATH)
    page.click(f"button.sim-member[data-userid='{userid}']")
    page.wait_for_selector("#site-name")
    assert page.url == f"{live_server.url}/admin/"
    assert "Site administration" in page.title()
    assert (user.get_short_name() or user.get_username()).lower() in page.inner_text("#user-tools").lower()
