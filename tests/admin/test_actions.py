"""Admin actions that start work: permission checks, CSRF, and what each action does."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from tests.factories import make_source
from wecom_sync.models import CallbackEvent, ExternalUser, SyncRun
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = pytest.mark.django_db


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=30, departments=5, seed=3)) as simulator:
        yield simulator


@pytest.fixture
def source(sim):
    return make_source(corp_id=sim.corp_id, secret=sim.app_secret, contact_sync_secret="",
                       api_base_url=sim.base_url, removal_threshold_count=3, removal_threshold_percent=10)


def staff_client(*, run_sync: bool) -> Client:
    user = get_user_model().objects.create_user(f"staff{run_sync}", password="pw", is_staff=True)
    codenames = ["view_syncsource", "change_syncsource", "view_syncrun", "view_callbackevent"]
    if run_sync:
        codenames.append("run_sync")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="wecom_sync",
                                                        codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def post_urls(source, run):
    return [
        reverse("admin:wecom_sync_syncsource_sync", args=[source.pk]),
        reverse("admin:wecom_sync_syncsource_dryrun", args=[source.pk]),
        reverse("admin:wecom_sync_syncsource_test", args=[source.pk]),
        reverse("admin:wecom_sync_syncrun_approve", args=[run.pk]),
        reverse("admin:wecom_sync_syncrun_reject", args=[run.pk]),
        reverse("admin:wecom_sync_syncrun_retry", args=[run.pk]),
    ]


def test_staff_without_run_sync_cannot_start_anything(source):
    run = SyncRun.objects.create(source=source, status=SyncRun.Status.HELD)
    client = staff_client(run_sync=False)
    for url in post_urls(source, run):
        assert client.post(url).status_code == 403, url
    assert SyncRun.objects.count() == 1
    # Read-only pages still work, without the buttons and without the list actions.
    page = client.get(reverse("admin:wecom_sync_syncsource_change", args=[source.pk])).content.decode()
    assert "wecom-sync-now" not in page
    changelist = client.get(reverse("admin:wecom_sync_syncsource_changelist")).content.decode()
    assert "sync_now_action" not in changelist
    run_page = client.get(reverse("admin:wecom_sync_syncrun_change", args=[run.pk])).content.decode()
    assert "wecom-approve" not in run_page
    events = client.get(reverse("admin:wecom_sync_callbackevent_changelist")).content.decode()
    assert "reprocess_action" not in events
    data = {"action": "sync_now_action", "_selected_action": [source.pk]}
    client.post(reverse("admin:wecom_sync_syncsource_changelist"), data)
    assert SyncRun.objects.count() == 1


def test_get_is_refused_and_csrf_is_enforced(source):
    run = SyncRun.objects.create(source=source, status=SyncRun.Status.HELD)
    client = staff_client(run_sync=True)
    for url in post_urls(source, run):
        assert client.get(url).status_code == 405, url
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(get_user_model().objects.get(username="staffTrue"))
    assert csrf_client.post(post_urls(source, run)[0]).status_code == 403
    assert SyncRun.objects.count() == 1


def test_sync_now_and_dry_run_and_list_actions(source, sim):
    client = staff_client(run_sync=True)
    response = client.post(reverse("admin:wecom_sync_syncsource_dryrun", args=[source.pk]))
    assert response.status_code == 302
    dry = SyncRun.objects.get()
    assert dry.kind == SyncRun.Kind.DRY_RUN and dry.trigger == SyncRun.Trigger.MANUAL
    assert ExternalUser.objects.count() == 0

    response = client.post(reverse("admin:wecom_sync_syncsource_sync", args=[source.pk]))
    run = SyncRun.objects.exclude(pk=dry.pk).get()
    assert response["Location"].endswith(reverse("admin:wecom_sync_syncrun_change", args=[run.pk]))
    assert run.status == SyncRun.Status.SUCCEEDED
    assert ExternalUser.objects.filter(source=source).count() == len(sim.org.users)

    progress = client.get(reverse("admin:wecom_sync_syncrun_progress", args=[run.pk])).json()
    assert progress["status"] == "succeeded" and progress["finished"] is True

    data = {"action": "sync_now_action", "_selected_action": [source.pk]}
    client.post(reverse("admin:wecom_sync_syncsource_changelist"), data)
    assert SyncRun.objects.filter(kind=SyncRun.Kind.FULL).count() == 2


def test_test_connection_reports_counts_and_errors(source, sim):
    client = staff_client(run_sync=True)
    page = client.post(reverse("admin:wecom_sync_syncsource_test", args=[source.pk])).content.decode()
    assert "All checks passed" in page
    assert f'<strong class="wecom-departments">{len(sim.org.departments)}</strong>' in page
    source.secret = "wrong-secret-value-0000"
    source.save()
    page = client.post(reverse("admin:wecom_sync_syncsource_test", args=[source.pk])).content.decode()
    assert "Some checks failed" in page and "40001" in page
    assert "wrong-secret-value-0000" not in page


def test_held_run_approve_and_reject(source, sim):
    client = staff_client(run_sync=True)
    client.post(reverse("admin:wecom_sync_syncsource_sync", args=[source.pk]))
    for userid in sorted(sim.org.users)[:10]:
        sim.delete_user(userid, deliver=False)
    client.post(reverse("admin:wecom_sync_syncsource_sync", args=[source.pk]))
    held = SyncRun.objects.order_by("-id").first()
    assert held.status == SyncRun.Status.HELD
    page = client.get(reverse("admin:wecom_sync_syncrun_change", args=[held.pk])).content.decode()
    assert page.count("wecom-pending-removal") >= 10 and "wecom-approve" in page

    client.post(reverse("admin:wecom_sync_syncrun_reject", args=[held.pk]))
    held.refresh_from_db()
    assert held.status == SyncRun.Status.REJECTED
    assert ExternalUser.objects.filter(source=source, is_removed=True).count() == 0

    client.post(reverse("admin:wecom_sync_syncsource_sync", args=[source.pk]))
    held = SyncRun.objects.order_by("-id").first()
    assert held.status == SyncRun.Status.HELD
    client.post(reverse("admin:wecom_sync_syncrun_approve", args=[held.pk]))
    assert ExternalUser.objects.filter(source=source, is_removed=True).count() == 10


def test_retry_and_reprocess(source):
    client = staff_client(run_sync=True)
    failed = SyncRun.objects.create(source=source, status=SyncRun.Status.FAILED)
    response = client.post(reverse("admin:wecom_sync_syncrun_retry", args=[failed.pk]))
    retry = SyncRun.objects.exclude(pk=failed.pk).get()
    assert retry.trigger == SyncRun.Trigger.RETRY
    assert response["Location"].endswith(reverse("admin:wecom_sync_syncrun_change", args=[retry.pk]))

    event = CallbackEvent.objects.create(source=source, dedupe_key="k1", event="change_contact",
                                         change_type="update_tag", object_id="1", status="failed",
                                         attempts=5, last_error="boom")
    data = {"action": "reprocess_action", "_selected_action": [event.pk]}
    client.post(reverse("admin:wecom_sync_callbackevent_changelist"), data)
    event.refresh_from_db()
    assert event.status != CallbackEvent.Status.FAILED
