"""The admin action "Send a WeCom message" in real headless Chromium, against the simulator's message/send."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from tests.factories import make_source
from wecom_sync.models import ExternalUser, SyncRun
from wecom_sync.services import run_full_sync
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_send_a_wecom_message_from_the_users_list(page, live_server):
    with WeComSimulator(generate_organisation(users=8, departments=3, seed=4)) as sim:
        source = make_source(corp_id=sim.corp_id, secret=sim.app_secret, contact_sync_secret="",
                             api_base_url=sim.base_url, agent_id=sim.agent_id, name="Acme WeCom")
        assert run_full_sync(source).status == SyncRun.Status.SUCCEEDED
        User = get_user_model()  # noqa: N806
        User.objects.create_superuser("admin", "admin@example.com", "admin-pass-123")
        target = ExternalUser.objects.filter(source=source, is_removed=False).order_by("userid_key").first()
        page.goto(f"{live_server.url}/admin/login/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "admin-pass-123")
        page.click("input[type=submit]")
        admin_pk = User.objects.get(username="admin").pk
        page.goto(f"{live_server.url}/admin/auth/user/")
        page.check(f"input.action-select[value='{target.user_id}']")
        page.check(f"input.action-select[value='{admin_pk}']")
        page.select_option("select[name=action]", "send_wecom_message")
        page.click("button[name=index]")
        page.wait_for_selector("#wecom-send-message-form")
        page.select_option("#id_msgtype", "text")
        page.fill("#id_content", "浏览器里发出的消息")
        page.click("#wecom-send")
        page.wait_for_selector(".messagelist")
        text = page.inner_text(".messagelist")
        assert "admin" in text  # the superuser has no WeCom account: listed as left out
        assert sim.messages_to(target.userid)[0]["content"] == {"content": "浏览器里发出的消息"}
