"""End-to-end admin tests in real headless Chromium against a live server and the WeCom simulator."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model

from wecom_sync.models import ExternalUser, SyncRun, SyncSource
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=60, departments=8, seed=7)) as simulator:
        yield simulator


@pytest.fixture
def admin_page(page, live_server):
    get_user_model().objects.create_superuser("admin", "admin@example.com", "admin-pass-123")
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin-pass-123")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    return page


def add_source(page, live_server, sim, slug="acme"):
    page.goto(f"{live_server.url}/admin/wecom_sync/syncsource/add/")
    page.fill("#id_name", "Acme")
    page.press("#id_name", "Tab")  # let the admin's slug prepopulation run before the slug is typed
    page.fill("#id_slug", slug)
    page.fill("#id_corp_id", sim.corp_id)
    page.fill("#id_agent_id", str(sim.agent_id))
    page.fill("#id_secret", sim.app_secret)
    page.fill("#id_api_base_url", sim.base_url)
    page.fill("#id_removal_threshold_count", "5")
    # The Generate buttons fill a Token and an EncodingAESKey of the right shape.
    page.click("button[data-wecom-generated-for=token]")
    page.click("button[data-wecom-generated-for=encoding_aes_key]")
    assert re.fullmatch(r"[A-Za-z0-9]{43}", page.input_value("#id_encoding_aes_key"))
    page.click("input[name=_continue]")
    page.wait_for_selector("#wecom-callback-url")
    return SyncSource.objects.get(slug=slug)


def test_add_source_test_connection_sync_and_dry_run(admin_page, live_server, sim):
    page = admin_page
    source = add_source(page, live_server, sim)
    assert page.inner_text("#wecom-callback-url") == f"{live_server.url}/wecom/callback/acme/"
    assert sim.app_secret not in page.content()

    page.click("#wecom-test-connection")
    page.wait_for_selector(".wecom-probe")
    assert "All checks passed" in page.inner_text(".wecom-probe h2")
    assert page.inner_text(".wecom-departments") == str(len(sim.org.departments))

    page.goto(f"{live_server.url}/admin/wecom_sync/syncsource/{source.pk}/change/")
    page.click("#wecom-sync-now")
    page.wait_for_selector("#wecom-run-status[data-status=succeeded]", timeout=60_000)
    assert ExternalUser.objects.filter(source=source).count() == len(sim.org.users)

    # Open a user: the WeCom user page links the Django user.
    userid = sorted(sim.org.users)[0]
    user = ExternalUser.objects.get(source=source, userid_key=userid.lower())
    page.goto(f"{live_server.url}/admin/wecom_sync/externaluser/{user.pk}/change/")
    assert userid in page.content()
    assert user.user.get_username() in page.inner_text(".field-django_user")

    # A dry run after a change in WeCom shows its plan and applies nothing.
    sim.update_user(userid, name="Renamed In WeCom", deliver=False)
    page.goto(f"{live_server.url}/admin/wecom_sync/syncsource/{source.pk}/change/")
    page.click("#wecom-dry-run")
    page.wait_for_selector("#wecom-run-status[data-status=succeeded]", timeout=60_000)
    assert "Planned changes" in page.inner_text("#wecom-changes h2")
    assert userid in page.inner_text("#wecom-changes")
    user.refresh_from_db()
    assert user.name != "Renamed In WeCom"


def test_held_removal_is_approved_in_the_browser(admin_page, live_server, sim):
    page = admin_page
    source = add_source(page, live_server, sim, slug="held")
    page.click("#wecom-sync-now")
    page.wait_for_selector("#wecom-run-status[data-status=succeeded]", timeout=60_000)

    gone = sorted(sim.org.users)[:40]
    for userid in gone:
        sim.delete_user(userid, deliver=False)
    page.goto(f"{live_server.url}/admin/wecom_sync/syncsource/{source.pk}/change/")
    page.click("#wecom-sync-now")
    page.wait_for_selector("#wecom-held", timeout=60_000)
    assert page.locator(".wecom-pending-removal").count() >= 40
    assert ExternalUser.objects.filter(source=source, is_removed=True).count() == 0

    page.click("#wecom-approve")
    page.wait_for_selector(".messagelist .success")
    run = SyncRun.objects.filter(source=source).order_by("-id").first()
    assert run.status != SyncRun.Status.HELD
    removed = ExternalUser.objects.filter(source=source, is_removed=True)
    assert sorted(u.userid_key for u in removed) == sorted(u.lower() for u in gone)
    assert all(not u.user.is_active for u in removed if u.user and not u.user.is_superuser)


def test_run_page_shows_live_progress_without_reload(admin_page, live_server):
    from tests.factories import make_source

    source = make_source()
    run = SyncRun.objects.create(source=source, status=SyncRun.Status.RUNNING, progress_done=10, progress_total=100)
    page = admin_page
    page.goto(f"{live_server.url}/admin/wecom_sync/syncrun/{run.pk}/change/")
    assert page.inner_text("#wecom-run-counts") == "10/100"
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    SyncRun.objects.filter(pk=run.pk).update(progress_done=60, counters={"users_created": 60})
    page.wait_for_function("document.getElementById('wecom-run-counts').textContent === '60/100'")
    assert page.evaluate("window.__sameDocument") is True
    assert page.evaluate("document.getElementById('wecom-progress-bar').style.width") == "60%"

    SyncRun.objects.filter(pk=run.pk).update(progress_done=100, status=SyncRun.Status.SUCCEEDED)
    page.wait_for_selector("#wecom-run-status[data-status=succeeded]")
