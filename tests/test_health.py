"""Operations signals (wecom_sync.health): ``manage.py wecom_sync_status`` and ``api/health/`` report each source,
and fail on a held run, a failed last sync, no successful sync within twice the interval, or old pending events."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.core.management.base import BaseCommand
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from tests.factories import make_source, make_user
from wecom_sync import health
from wecom_sync.callbacks import parse_event, store_event
from wecom_sync.management.commands.wecom_sync_status import Command as StatusCommand
from wecom_sync.models import CallbackEvent, SyncRun, SyncSource
from wecom_sync.services import run_full_sync
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = pytest.mark.django_db


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=20, departments=4, seed=11)) as simulator:
        yield simulator


@pytest.fixture
def source(sim):
    src = make_source(name="Acme", slug="acme", corp_id=sim.corp_id, secret=sim.app_secret, contact_sync_secret="",
                      api_base_url=sim.base_url, removal_threshold_count=3, removal_threshold_percent=10)
    assert run_full_sync(src).status == SyncRun.Status.SUCCEEDED
    return src


def status(*slugs: str) -> tuple[int, str]:
    """Run the command; return (exit code, output)."""
    out = io.StringIO()
    try:
        call_command("wecom_sync_status", *slugs, stdout=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)
    return 0, out.getvalue()


def codes(source: SyncSource) -> list[str]:
    return [p.code for p in health.source_health(SyncSource.objects.get(pk=source.pk)).problems]


def test_healthy_source_exits_zero_with_one_line(source, sim):
    other = make_source(name="Zeta", slug="zeta", enabled=False)
    code, out = status()
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("acme  OK  ") and f"members {len(sim.org.users)}" in lines[0]
    assert lines[1].startswith(f"{other.slug}  DISABLED  ")


def test_held_run_fails_the_check(source, sim):
    for userid in sorted(sim.org.users)[:8]:
        sim.delete_user(userid, deliver=False)
    held = run_full_sync(source)
    assert held.status == SyncRun.Status.HELD
    code, out = status()
    assert code == 1 and "PROBLEM" in out and f"#{held.pk}" in out
    assert codes(source) == [health.HELD_RUN]
    # A disabled source is reported, never counted.
    SyncSource.objects.filter(pk=source.pk).update(enabled=False)
    assert status()[0] == 0


def test_failed_last_run_fails_until_a_later_success(source, sim):
    source.secret = "wrong-secret-0000"
    source.save()
    assert run_full_sync(source).status == SyncRun.Status.FAILED
    code, out = status("acme")
    assert code == 1 and health.LAST_RUN_FAILED in codes(source)
    source.secret = sim.app_secret
    source.save()
    assert run_full_sync(source).status == SyncRun.Status.SUCCEEDED
    assert status("acme")[0] == 0


def test_no_success_within_twice_the_interval(source):
    source.sync_interval_minutes = 10
    source.save()
    last = SyncRun.objects.get(source=source)
    SyncRun.objects.filter(pk=last.pk).update(finished_at=timezone.now() - timedelta(minutes=19))
    assert status()[0] == 0
    SyncRun.objects.filter(pk=last.pk).update(finished_at=timezone.now() - timedelta(minutes=21))
    code, out = status()
    assert code == 1 and codes(source) == [health.NO_RECENT_SUCCESS]
    # Without an interval there is no such expectation.
    SyncSource.objects.filter(pk=source.pk).update(sync_interval_minutes=0)
    assert status()[0] == 0


def test_never_synced_source_with_interval(sim):
    fresh = make_source(slug="fresh", sync_interval_minutes=5)
    assert status()[0] == 0  # just created: not yet late
    SyncSource.objects.filter(pk=fresh.pk).update(created_at=timezone.now() - timedelta(minutes=11))
    assert status()[0] == 1 and codes(fresh) == [health.NO_RECENT_SUCCESS]


def test_old_pending_events(source, sim):
    userid = sorted(sim.org.users)[0]
    event = store_event(source, parse_event(sim.update_user(userid, name="N", deliver=False)))[0]
    assert event.status == CallbackEvent.Status.PENDING
    assert status()[0] == 0  # fresh
    CallbackEvent.objects.filter(pk=event.pk).update(received_at=timezone.now() - timedelta(seconds=3700))
    code, out = status()
    assert code == 1 and codes(source) == [health.OLD_PENDING_EVENTS]
    with override_settings(WECOM_SYNC={**django_settings.WECOM_SYNC, "STATUS_PENDING_EVENT_MAX_AGE_SECONDS": 7200}):
        assert status()[0] == 0
    CallbackEvent.objects.filter(pk=event.pk).update(status=CallbackEvent.Status.APPLIED)
    assert status()[0] == 0


def test_unknown_slug_and_json_output(source):
    with pytest.raises(CommandError, match="Unknown source"):
        call_command("wecom_sync_status", "nope")
    out = io.StringIO()
    call_command("wecom_sync_status", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["ok"] is True and report["sources"][0]["slug"] == "acme"


@pytest.mark.django_db(transaction=True)
def test_command_line_exit_status(source, sim):
    """From the command line, the check exits with status 1 (what a monitor reads)."""
    for userid in sorted(sim.org.users)[:8]:
        sim.delete_user(userid, deliver=False)
    assert run_full_sync(source).status == SyncRun.Status.HELD
    command = StatusCommand(stdout=io.StringIO(), stderr=io.StringIO())
    with pytest.raises(SystemExit) as exited:
        BaseCommand.run_from_argv(command, ["manage.py", "wecom_sync_status"])
    assert exited.value.code == 1


def test_health_endpoint(source, sim):
    path = reverse("wecom_sync:api-health")
    assert APIClient().get(path).status_code in (401, 403)
    refused = APIClient()
    refused.force_login(make_user("no-perms", "view_syncrun"))
    assert refused.get(path).status_code == 403

    client = APIClient()
    client.force_login(make_user("monitor", "view_syncsource"))
    response = client.get(path)
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    entry = body["sources"][0]
    assert entry["slug"] == "acme" and entry["members"] == len(sim.org.users) and entry["problems"] == []

    for userid in sorted(sim.org.users)[:8]:
        sim.delete_user(userid, deliver=False)
    held = run_full_sync(source)
    response = client.get(path)
    assert response.status_code == 503
    entry = response.json()["sources"][0]
    assert response.json()["ok"] is False and entry["held_run_ids"] == [held.pk]
    assert [p["code"] for p in entry["problems"]] == ["held_run"]
    # Same content as the command's JSON.
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("wecom_sync_status", "--json", stdout=out)
    command_report = json.loads(out.getvalue())
    assert command_report["sources"][0]["problems"] == entry["problems"]
