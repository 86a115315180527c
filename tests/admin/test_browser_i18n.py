"""The admin in Simplified Chinese, in real headless Chromium: switched with the admin's language selector."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from wecom_sync.crypto import generate_encoding_aes_key, generate_token
from wecom_sync.models import SyncSource
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=30, departments=5, seed=3)) as simulator:
        yield simulator


def test_source_page_in_chinese_through_the_language_selector(page, live_server, sim):
    get_user_model().objects.create_superuser("admin", "admin@example.com", "admin-pass-123")
    source = SyncSource.objects.create(
        name="Acme", slug="acme", corp_id=sim.corp_id, agent_id=sim.agent_id, secret=sim.app_secret,
        api_base_url=sim.base_url, token=generate_token(), encoding_aes_key=generate_encoding_aes_key(),
    )
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin-pass-123")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")

    change_url = f"{live_server.url}/admin/wecom_sync/syncsource/{source.pk}/change/"
    page.goto(change_url)
    assert page.text_content("#wecom-sync-now").strip() == "Sync now"  # the browser asks for English first

    # The selector posts to set_language and comes back to the same page, now in Chinese.
    with page.expect_navigation():
        page.select_option("#language-select", "zh-hans")
    page.wait_for_selector("#wecom-sync-now")
    assert page.url == change_url
    assert page.get_attribute("html", "lang") == "zh-hans"
    assert page.text_content("#wecom-sync-now").strip() == "立即同步"
    assert page.text_content("#wecom-dry-run").strip() == "试运行"
    assert page.text_content("#wecom-test-connection").strip() == "测试连接"
    headings = page.locator("fieldset h2").all_inner_texts()
    assert {"基本信息", "凭据", "回调（实时同步）", "同步行为"} <= set(headings), headings
    assert page.inner_text("label[for=id_corp_id]").startswith("企业ID")
    assert page.inner_text("label[for=id_agent_id]").startswith("AgentId")
    assert page.inner_text("label[for=id_token]").startswith("Token")
    assert "通讯录同步" in page.inner_text("fieldset:has(#id_token)")
    assert "设置接收事件服务器" in page.inner_text("fieldset:has(#id_token)")
    assert page.text_content("button[data-wecom-copy]").strip() == "复制"
    assert page.text_content("button[data-wecom-generated-for=token]").strip() == "生成"
    assert "Sync now" not in page.text_content("body") and "Credentials" not in page.text_content("body")

    # Test connection answers in Chinese too.
    page.click("#wecom-test-connection")
    page.wait_for_selector(".wecom-probe")
    assert "全部检查通过" in page.inner_text(".wecom-probe h2")
    assert "应用 Secret：获取部门列表" in page.inner_text(".wecom-probe")

    # And back to English.
    page.goto(change_url)
    with page.expect_navigation():
        page.select_option("#language-select", "en")
    page.wait_for_selector("#wecom-sync-now")
    assert page.text_content("#wecom-sync-now").strip() == "Sync now"
