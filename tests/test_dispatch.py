"""Sync now works or says why: no Celery app, no worker, runs in the web process, the queued hint, and
failed events sent again for their next attempt without beat."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from tests.factories import make_source
from wecom_sync import tasks
from wecom_sync.callbacks import parse_event, store_event
from wecom_sync.models import CallbackEvent, ExternalUser, SyncRun
from wecom_sync.simulator import WeComSimulator, generate_organisation


def wecom_settings(**values):
    return override_settings(WECOM_SYNC={**django_settings.WECOM_SYNC, **values})


@contextmanager
def current_celery_app(app):
    from celery import _state

    previous = _state.get_current_app()
    _state._set_current_app(app)
    try:
        yield app
    finally:
        _state._set_current_app(previous)


def unconfigured_celery_app():
    """Celery's fallback, what a site that never created a Celery app sends tasks with."""
    from celery import Celery

    return Celery("default", fixups=[], set_as_current=False, loader="default")


def _reset_broker_pools(app) -> None:
    from kombu import pools

    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    app.amqp._producer_pool = None
    pools.reset()


@pytest.fixture
def redis_broker(redis_url):
    """The example project's Celery app publishing for real to Redis (no worker), eager mode off."""
    import redis

    from example_project.celery import app

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    saved = (app.conf.task_always_eager, app.conf.broker_url)
    app.conf.task_always_eager = False
    app.conf.broker_url = redis_url
    _reset_broker_pools(app)
    yield client
    app.conf.task_always_eager, app.conf.broker_url = saved
    _reset_broker_pools(app)
    client.flushdb()
    client.close()


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=15, departments=4, seed=11)) as simulator:
        yield simulator


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")


def sim_source(sim):
    return make_source(corp_id=sim.corp_id, secret=sim.app_secret, contact_sync_secret="",
                       api_base_url=sim.base_url, agent_id=sim.agent_id)


def page_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.mark.django_db
def test_sync_now_without_a_celery_app_fails_at_once_and_says_why(client, staff, sim):
    source = sim_source(sim)
    client.force_login(staff)
    with current_celery_app(unconfigured_celery_app()):
        response = client.post(reverse("admin:wecom_sync_syncsource_sync", args=[source.pk]), follow=True)
    run = SyncRun.objects.get(source=source)
    assert run.status == SyncRun.Status.FAILED and run.finished_at is not None
    assert "No Celery app is configured" in run.message and "RUN_TASKS_IN_PROCESS" in run.message
    shown = page_messages(response)
    assert any("the sync was not started" in m and "No Celery app is configured" in m for m in shown), shown
    assert not any("Queued" in m for m in shown)
    assert sim.calls["/cgi-bin/gettoken"] == 0


@pytest.mark.django_db
def test_sync_now_with_a_broker_but_no_worker_fails_at_once_and_sends_nothing(client, staff, sim, redis_broker):
    source = sim_source(sim)
    client.force_login(staff)
    with wecom_settings(WORKER_PING_TIMEOUT=0.5):
        response = client.post(reverse("admin:wecom_sync_syncsource_changelist"), {
            "action": "sync_now_action", "_selected_action": [source.pk]}, follow=True)
    run = SyncRun.objects.get(source=source)
    assert run.status == SyncRun.Status.FAILED
    assert "No Celery worker answered within 0.5 s: is `celery worker` running?" in run.message
    shown = page_messages(response)
    assert any("No Celery worker answered" in m for m in shown) and not any("Queued" in m for m in shown), shown
    assert redis_broker.llen("celery") == 0  # no task waits for a worker that is not there


@pytest.mark.django_db(transaction=True)
def test_in_process_mode_runs_the_sync_in_the_web_process_and_the_run_page_follows_it(client, staff, sim):
    source = sim_source(sim)
    client.force_login(staff)
    with wecom_settings(RUN_TASKS_IN_PROCESS=True), current_celery_app(unconfigured_celery_app()):
        response = client.post(reverse("admin:wecom_sync_syncsource_sync", args=[source.pk]))
        run = SyncRun.objects.get(source=source)
        assert response["Location"] == reverse("admin:wecom_sync_syncrun_change", args=[run.pk])
        progress_url = reverse("admin:wecom_sync_syncrun_progress", args=[run.pk])
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = json.loads(client.get(progress_url).content)
            seen.append(state["status"])
            if state["finished"]:
                break
            time.sleep(0.3)
    assert state["status"] == SyncRun.Status.SUCCEEDED, (state, seen)
    assert state["counters"]["users_created"] == 15
    assert ExternalUser.objects.filter(source=source).count() == 15
    assert client.get(response["Location"]).status_code == 200


@pytest.mark.django_db
def test_a_run_still_queued_after_the_hint_delay_says_no_worker_took_it(client, staff):
    source = make_source()
    client.force_login(staff)
    fresh = SyncRun.objects.create(source=source, status=SyncRun.Status.QUEUED)
    old = SyncRun.objects.create(source=source, status=SyncRun.Status.QUEUED)
    SyncRun.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(seconds=90))
    with wecom_settings(QUEUED_HINT_SECONDS=60):
        fresh_page = client.get(reverse("admin:wecom_sync_syncrun_change", args=[fresh.pk])).content.decode()
        old_page = client.get(reverse("admin:wecom_sync_syncrun_change", args=[old.pk])).content.decode()
    assert "wecom-queued-hint" not in fresh_page
    assert 'id="wecom-queued-hint"' in old_page and "<code>celery worker</code> running?" in old_page


@pytest.mark.django_db
def test_a_failed_event_is_sent_again_for_its_next_attempt_without_beat(sim, redis_broker):
    source = sim_source(sim)
    userid = sorted(sim.org.users)[0]
    sim.faults.fail_next(60020, count=1, path="/cgi-bin/user/get")  # not transient: this attempt fails
    event = store_event(source, parse_event(sim.update_user(userid, name="retried", deliver=False)))[0]
    assert tasks.process_callback_event(event.pk) == CallbackEvent.Status.PENDING  # as a worker runs it
    event.refresh_from_db()
    assert event.attempts == 1 and event.next_attempt_at > timezone.now()
    messages = [json.loads(m) for m in redis_broker.lrange("celery", 0, -1)]
    assert len(messages) == 1, messages
    headers = messages[0]["headers"]
    assert headers["task"] == "wecom_sync.tasks.process_callback_event"
    assert headers["argsrepr"] == f"({event.pk},)"
    eta = timezone.datetime.fromisoformat(headers["eta"])
    assert abs((eta - event.next_attempt_at).total_seconds()) < 5  # due when the event's retry is
