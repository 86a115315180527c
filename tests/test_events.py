"""Real-time sync end to end: simulator mutations -> real HTTP -> the endpoint -> the inbox -> the apply code.

Every test runs a live Django server and the WeCom simulator (a real HTTP server); the simulator's own
delivery encrypts with the project's crypto, and the "wechatpy" variant re-encrypts the same event with
wechatpy, an independent implementation.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
import requests
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.utils import timezone
from wechatpy.enterprise.crypto import WeChatCrypto as WechatpyCrypto

from tests.factories import AES_KEY, TOKEN, make_source
from wecom_sync import events
from wecom_sync.callbacks import parse_event, store_event
from wecom_sync.models import (
    CallbackEvent,
    ExternalDepartment,
    ExternalMembership,
    ExternalUser,
    SyncRun,
    SyncRunChange,
)
from wecom_sync.services import run_full_sync
from wecom_sync.simulator import WeComSimulator, generate_organisation
from wecom_sync.tasks import requeue_pending_events

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()
Status = CallbackEvent.Status


def wecom_settings(**values):
    return override_settings(WECOM_SYNC={**django_settings.WECOM_SYNC, **values})


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=12, departments=4, seed=7)) as simulator:
        yield simulator


@pytest.fixture
def source(sim, live_server):
    src = make_source(
        corp_id=sim.corp_id, secret=sim.app_secret, contact_sync_secret="", api_base_url=sim.base_url,
        agent_id=sim.agent_id,
    )
    run = run_full_sync(src, trigger="api")
    assert run.status == SyncRun.Status.SUCCEEDED, run.message
    sim.set_callback(live_server.url + src.get_callback_path(), TOKEN, AES_KEY)
    sim.reset_calls()
    return src


def _field(xml: str, name: str) -> str:
    return re.search(rf"<{name}>(?:<!\[CDATA\[)?(.*?)(?:\]\]>)?</{name}>", xml, re.S).group(1)


def deliver_with_wechatpy(sim, source, live_server, event_xml: str, nonce: str = "424242") -> requests.Response:
    """POST an event encrypted and signed by wechatpy, as WeCom's contact-sync assistant would (no AgentID)."""
    timestamp = str(int(time.time()))
    reply = WechatpyCrypto(TOKEN, AES_KEY, sim.corp_id).encrypt_message(event_xml, nonce, timestamp)
    body = (f"<xml><ToUserName><![CDATA[{sim.corp_id}]]></ToUserName>"
            f"<Encrypt><![CDATA[{_field(reply, 'Encrypt')}]]></Encrypt></xml>")
    params = {"msg_signature": _field(reply, "MsgSignature"), "timestamp": timestamp, "nonce": nonce}
    return requests.post(live_server.url + source.get_callback_path(), params=params, data=body.encode(),
                         headers={"Content-Type": "text/xml"}, timeout=10)


@pytest.fixture(params=["project", "wechatpy"])
def mutate(request, sim, source, live_server):
    """Run a simulator mutation; its event is delivered encrypted by the project's crypto or by wechatpy."""

    def run(method: str, /, *args, **kwargs) -> str:
        if request.param == "project":
            xml = getattr(sim, method)(*args, **kwargs)
            assert sim.deliveries[-1][1] == 200
            return xml
        xml = getattr(sim, method)(*args, deliver=False, **kwargs)
        assert deliver_with_wechatpy(sim, source, live_server, xml).status_code == 200
        return xml

    return run


def last_event() -> CallbackEvent:
    return CallbackEvent.objects.order_by("-pk").first()


def some_user(sim) -> dict:
    return next(u for u in sim.org.users.values() if u.get("status") == 1)


def leaf_department(sim) -> int:
    return next(d for d in sorted(sim.org.departments) if d != 1 and not sim.org.children(d))


# -- each ChangeType ends in the expected local state ---------------------------------------------------


def test_create_user(mutate, sim, source):
    dept = leaf_department(sim)
    mutate("add_user", {"userid": "NewHire", "name": "新同事", "department": [dept], "email": "new@example.com"})
    event = last_event()
    assert (event.change_type, event.status) == ("create_user", Status.APPLIED)
    ext = ExternalUser.objects.get(source=source, userid_key="newhire")
    assert ext.name == "新同事"  # the trimmed event has no name: it came from user/get
    assert ext.user is not None and ext.user.is_active
    assert ExternalMembership.objects.filter(user=ext, department__department_id=dept).exists()
    run = event.run
    assert (run.kind, run.trigger, run.status) == ("events", "callback", SyncRun.Status.SUCCEEDED)
    assert run.changes.filter(object_type="user", external_id__iexact="NewHire", action="created").exists()
    assert sim.calls["/cgi-bin/user/get"] == 1


def test_update_user(mutate, sim, source):
    user = some_user(sim)
    before = ExternalUser.objects.get(source=source, userid_key=user["userid"].lower())
    mutate("update_user", user["userid"], name="改名了", position="CTO")
    after = ExternalUser.objects.get(pk=before.pk)
    assert after.name == "改名了"
    assert after.raw["position"] == "CTO"
    assert after.user_id == before.user_id
    assert last_event().run.changes.filter(object_type="user", action="updated").exists()


def test_move_user(mutate, sim, source):
    user = some_user(sim)
    dept = leaf_department(sim)
    mutate("move_user", user["userid"], [dept])
    ext = ExternalUser.objects.get(source=source, userid_key=user["userid"].lower())
    assert list(ext.memberships.values_list("department__department_id", flat=True)) == [dept]


def test_rename_userid_keeps_the_django_user(mutate, sim, source):
    user = some_user(sim)
    old = user["userid"]
    before = ExternalUser.objects.get(source=source, userid_key=old.lower())
    django_pk = before.user_id
    mutate("rename_userid", old, "renamed.person")
    assert last_event().status == Status.APPLIED
    after = ExternalUser.objects.get(source=source, userid_key="renamed.person")
    assert after.pk == before.pk
    assert after.user_id == django_pk
    assert User.objects.get(pk=django_pk).is_active
    assert not ExternalUser.objects.filter(source=source, userid_key=old.lower()).exists()
    assert ExternalUser.objects.filter(source=source).count() == len(sim.org.users)


def test_delete_user_applies_the_removal_policy(mutate, sim, source):
    user = some_user(sim)
    ext = ExternalUser.objects.get(source=source, userid_key=user["userid"].lower())
    mutate("delete_user", user["userid"])
    ext.refresh_from_db()
    assert ext.is_removed
    assert not User.objects.get(pk=ext.user_id).is_active  # default policy: deactivate, don't delete
    assert last_event().run.changes.filter(object_type="user", action="deactivated").exists()


def test_status_exited_deactivates(mutate, sim, source):
    user = some_user(sim)
    mutate("set_user_status", user["userid"], 5)
    ext = ExternalUser.objects.get(source=source, userid_key=user["userid"].lower())
    assert ext.status == 5


def test_create_update_and_move_department(mutate, sim, source):
    mutate("add_department", {"id": 900, "name": "新部门", "parentid": 1})
    dept = ExternalDepartment.objects.get(source=source, department_id=900)
    assert dept.name == "新部门" and dept.parent.department_id == 1 and not dept.is_removed
    mutate("update_department", 900, name="更名部门")
    dept.refresh_from_db()
    assert dept.name == "更名部门"
    target = leaf_department(sim)
    mutate("move_department", 900, target)
    dept.refresh_from_db()
    assert dept.parent.department_id == target
    assert last_event().run.changes.filter(object_type="department").exists()


def test_delete_department_removes_memberships_and_keeps_users(mutate, sim, source):
    dept = leaf_department(sim)
    members = list(sim.org.members(dept))
    assert members
    active_before = {
        u: ExternalUser.objects.get(source=source, userid_key=u.lower()).user.is_active for u in members
    }
    for userid in members:  # WeCom refuses to delete a non-empty department; those moves were missed here
        sim.move_user(userid, [1], deliver=False)
    mutate("delete_department", dept)
    local = ExternalDepartment.objects.get(source=source, department_id=dept)
    assert local.is_removed
    assert not ExternalMembership.objects.filter(department=local).exists()
    for userid in members:
        ext = ExternalUser.objects.get(source=source, userid_key=userid.lower())
        assert not ext.is_removed
        assert ext.user.is_active == active_before[userid]


@pytest.mark.parametrize(
    "fields",
    [
        "<Event><![CDATA[change_contact]]></Event><ChangeType><![CDATA[update_tag]]></ChangeType><TagId>3</TagId>"
        "<AddUserItems><![CDATA[a,b]]></AddUserItems>",
        "<Event><![CDATA[batch_job_result]]></Event><BatchJob><JobId><![CDATA[job1]]></JobId>"
        "<JobType><![CDATA[sync_user]]></JobType><ErrCode>0</ErrCode><ErrMsg><![CDATA[ok]]></ErrMsg></BatchJob>",
        "<Event><![CDATA[change_contact]]></Event><ChangeType><![CDATA[some_future_type]]></ChangeType>",
    ],
)
def test_tag_batch_job_and_unknown_events_are_ignored(sim, source, live_server, fields):
    xml = (f"<xml><ToUserName><![CDATA[{sim.corp_id}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
           f"<CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType>{fields}</xml>")
    body, params = sim.build_callback(xml)
    response = requests.post(live_server.url + source.get_callback_path(), params=params, data=body.encode(),
                             timeout=10)
    assert response.status_code == 200
    event = CallbackEvent.objects.get()
    assert event.status == Status.IGNORED
    assert event.run is None
    assert sum(sim.calls.values()) == 0


# -- once and only once -------------------------------------------------------------------------------


@pytest.mark.parametrize("encryptor", ["project", "wechatpy"])
def test_same_event_delivered_three_times_is_applied_once(sim, source, live_server, encryptor):
    xml = sim.add_user({"userid": "thrice", "name": "Three", "department": [1]}, deliver=False)
    for attempt in range(3):
        if encryptor == "project":
            body, params = sim.build_callback(xml)
            response = requests.post(live_server.url + source.get_callback_path(), params=params,
                                     data=body.encode(), timeout=10)
        else:
            response = deliver_with_wechatpy(sim, source, live_server, xml, nonce=str(1000 + attempt))
        assert response.status_code == 200
        assert response.content == b""
    assert CallbackEvent.objects.count() == 1
    assert CallbackEvent.objects.get().status == Status.APPLIED
    assert SyncRun.objects.filter(kind="events").count() == 1
    assert SyncRunChange.objects.filter(object_type="user", external_id="thrice", action="created").count() == 1
    assert sim.calls["/cgi-bin/user/get"] == 1
    assert ExternalUser.objects.filter(source=source, userid_key="thrice").count() == 1


def test_processing_is_idempotent(sim, source):
    xml = sim.update_user(some_user(sim)["userid"], name="x", deliver=False)
    event, created = store_event(source, parse_event(xml))
    assert created
    assert events.process_event(event.pk) == Status.APPLIED
    runs = SyncRun.objects.count()
    assert events.process_event(event.pk) == Status.APPLIED
    assert SyncRun.objects.count() == runs
    assert events.process_event(10**9) is None


def test_pending_events_about_one_object_are_coalesced(sim, source):
    userid = some_user(sim)["userid"]
    stored = [store_event(source, parse_event(sim.update_user(userid, name=f"n{i}", deliver=False)))[0]
              for i in range(3)]
    someone_else = next(u for u in sim.org.users if u != userid)
    other = store_event(source, parse_event(sim.update_user(someone_else, name="other", deliver=False)))[0]
    assert events.process_event(stored[1].pk) == Status.APPLIED
    rows = {e.pk: e for e in CallbackEvent.objects.filter(pk__in=[e.pk for e in stored])}
    assert {e.status for e in rows.values()} == {Status.APPLIED}
    assert len({e.run_id for e in rows.values()}) == 1
    assert sim.calls["/cgi-bin/user/get"] == 1
    assert ExternalUser.objects.get(source=source, userid_key=userid.lower()).name == "n2"
    run = rows[stored[1].pk].run
    assert run.counters["events"] == 3
    assert set(run.changes.filter(object_type="event", action="skipped").values_list("external_id", flat=True)) == {
        str(stored[0].pk), str(stored[2].pk)}
    assert CallbackEvent.objects.get(pk=other.pk).status == Status.PENDING


def test_rename_and_later_events_coalesce_through_the_new_userid(sim, source):
    old = some_user(sim)["userid"]
    ext = ExternalUser.objects.get(source=source, userid_key=old.lower())
    rename = store_event(source, parse_event(sim.rename_userid(old, "after.rename", deliver=False)))[0]
    update = store_event(source, parse_event(sim.update_user("after.rename", name="Later", deliver=False)))[0]
    # The event about the new userid is processed first: the rename must still happen first.
    assert events.process_event(update.pk) == Status.APPLIED
    assert CallbackEvent.objects.get(pk=rename.pk).status == Status.APPLIED
    ext.refresh_from_db()
    assert (ext.userid, ext.name) == ("after.rename", "Later")
    assert ExternalUser.objects.filter(source=source).count() == len(sim.org.users)


# -- ordering cannot regress ------------------------------------------------------------------------------


def test_late_older_delete_does_not_remove_a_member_who_exists(mutate, sim, source, live_server):
    sim.add_user({"userid": "phoenix", "name": "P", "department": [1]})
    stale_delete = sim.delete_user("phoenix", deliver=False)  # this delivery is delayed...
    mutate("add_user", {"userid": "phoenix", "name": "P again", "department": [1]})
    ext = ExternalUser.objects.get(source=source, userid_key="phoenix")
    assert not ext.is_removed
    body, params = sim.build_callback(stale_delete)  # ...and arrives last
    url = live_server.url + source.get_callback_path()
    requests.post(url, params=params, data=body.encode(), timeout=10).raise_for_status()
    assert last_event().status == Status.APPLIED
    ext.refresh_from_db()
    assert not ext.is_removed and ext.user.is_active and ext.name == "P again"


def test_late_older_update_applies_the_current_state(sim, source, live_server):
    userid = some_user(sim)["userid"]
    old = sim.update_user(userid, name="first", deliver=False)
    sim.update_user(userid, name="second")
    body, params = sim.build_callback(old)
    requests.post(live_server.url + source.get_callback_path(), params=params, data=body.encode(),
                  timeout=10).raise_for_status()
    assert ExternalUser.objects.get(source=source, userid_key=userid.lower()).name == "second"


# -- failures, retries, reprocessing, the broker being down ---------------------------------------------


def test_failure_is_recorded_then_retried_by_the_periodic_task(sim, source):
    userid = some_user(sim)["userid"]
    sim.faults.fail_next(60020, count=1, path="/cgi-bin/user/get")  # not transient: the client gives up
    sim.update_user(userid, name="after failure")
    event = last_event()
    assert event.status == Status.PENDING
    assert event.attempts == 1
    assert "60020" in event.last_error
    assert event.next_attempt_at > timezone.now()
    assert event.run.status == SyncRun.Status.FAILED
    assert event.run.changes.filter(object_type="event", action="failed").exists()
    assert sim.app_secret not in event.last_error and sim.app_secret not in event.run.message
    assert ExternalUser.objects.get(source=source, userid_key=userid.lower()).name != "after failure"
    # Not due yet: the periodic task leaves it alone.
    assert requeue_pending_events() == 0
    CallbackEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert requeue_pending_events() == 1
    event.refresh_from_db()
    assert event.status == Status.APPLIED
    assert ExternalUser.objects.get(source=source, userid_key=userid.lower()).name == "after failure"


def test_failed_after_max_attempts_then_reprocessed(sim, source):
    userid = some_user(sim)["userid"]
    with wecom_settings(EVENT_MAX_ATTEMPTS=2):
        sim.faults.fail_next(60020, count=2, path="/cgi-bin/user/get")
        sim.update_user(userid, name="eventually")
        event = last_event()
        assert (event.status, event.attempts) == (Status.PENDING, 1)
        CallbackEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
        requeue_pending_events()
        event.refresh_from_db()
        assert (event.status, event.attempts) == (Status.FAILED, 2)
        assert event.next_attempt_at is None and "60020" in event.last_error
        assert requeue_pending_events() == 0  # failed events wait for a person
        assert events.reprocess_events(CallbackEvent.objects.filter(pk=event.pk)) == 1
    event.refresh_from_db()
    assert (event.status, event.attempts, event.last_error) == (Status.APPLIED, 0, "")
    assert ExternalUser.objects.get(source=source, userid_key=userid.lower()).name == "eventually"
    assert SyncRun.objects.filter(kind="events", status=SyncRun.Status.FAILED).count() == 2


def test_events_wait_while_a_full_sync_holds_the_lock(sim, source):
    holder = SyncRun.objects.create(source=source, kind=SyncRun.Kind.FULL, status=SyncRun.Status.RUNNING,
                                    started_at=timezone.now(), heartbeat_at=timezone.now())
    type(source).objects.filter(pk=source.pk).update(lock_run=holder)
    sim.update_user(some_user(sim)["userid"], name="waits")
    event = last_event()
    assert event.status == Status.PENDING and event.attempts == 0 and event.next_attempt_at is not None
    assert sim.calls["/cgi-bin/user/get"] == 0
    SyncRun.objects.filter(pk=holder.pk).update(status=SyncRun.Status.SUCCEEDED, finished_at=timezone.now())
    type(source).objects.filter(pk=source.pk).update(lock_run=None)
    assert events.requeue_pending_events(now=timezone.now() + timedelta(minutes=5)) == 1
    assert last_event().status == Status.APPLIED


def test_events_of_a_disabled_source_are_ignored(sim, source):
    event = store_event(source, parse_event(sim.update_user(some_user(sim)["userid"], name="z", deliver=False)))[0]
    type(source).objects.filter(pk=source.pk).update(enabled=False)
    assert events.process_event(event.pk) == Status.IGNORED
    assert sim.calls["/cgi-bin/user/get"] == 0


def _reset_broker_pools(app) -> None:
    """Forget cached broker connections and producers, so the next publish uses the current broker_url."""
    from kombu import pools

    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    app.amqp._producer_pool = None
    pools.reset()  # kombu's global producer pools are keyed by connection and would be reused


@pytest.fixture
def unreachable_broker():
    """Make Celery publish for real, to a closed port; restore eager mode afterwards."""
    from example_project.celery import app

    saved = (app.conf.task_always_eager, app.conf.broker_url, app.conf.broker_connection_timeout,
             app.conf.task_default_queue)
    app.conf.task_always_eager = False
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    app.conf.broker_connection_timeout = 1
    _reset_broker_pools(app)
    yield app
    (app.conf.task_always_eager, app.conf.broker_url, app.conf.broker_connection_timeout,
     app.conf.task_default_queue) = saved
    _reset_broker_pools(app)


def test_broker_down_the_event_is_stored_and_later_applied(sim, source, unreachable_broker, caplog):
    userid = some_user(sim)["userid"]
    started = time.monotonic()
    sim.update_user(userid, name="while broker down")
    elapsed = time.monotonic() - started
    assert sim.deliveries[-1][1] == 200
    assert elapsed < 4.0  # well inside WeCom's 5-second window
    event = last_event()
    assert event.status == Status.PENDING and event.attempts == 0
    assert ("wecom_sync.callback", "wecom_sync.callback.enqueue_failed") in [
        (r.name, r.getMessage()) for r in caplog.records
    ]
    # The broker comes back (eager mode stands in for a worker); the periodic task finds the event.
    unreachable_broker.conf.task_always_eager = True
    assert requeue_pending_events() == 0  # younger than EVENT_REQUEUE_AFTER_SECONDS
    assert events.requeue_pending_events(now=timezone.now() + timedelta(seconds=61)) == 1
    event.refresh_from_db()
    assert event.status == Status.APPLIED
    assert ExternalUser.objects.get(source=source, userid_key=userid.lower()).name == "while broker down"


@pytest.mark.postgres
def test_concurrent_workers_apply_one_object_once(require_postgres, sim, source):
    """Workers racing on events about one member: one run applies the newest state, the others do nothing."""
    import threading

    from django.db import connection

    userid = some_user(sim)["userid"]
    stored = [store_event(source, parse_event(sim.update_user(userid, name=f"c{i}", deliver=False)))[0]
              for i in range(4)]
    barrier = threading.Barrier(len(stored))
    results: list[str | None] = []

    def work(pk: int) -> None:
        try:
            barrier.wait(timeout=10)
            results.append(events.process_event(pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(e.pk,)) for e in stored]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [Status.APPLIED] * len(stored)
    assert set(CallbackEvent.objects.values_list("status", flat=True)) == {Status.APPLIED}
    assert SyncRun.objects.filter(kind="events").count() == 1
    assert sim.calls["/cgi-bin/user/get"] == 1
    assert ExternalUser.objects.get(source=source, userid_key=userid.lower()).name == "c3"


def test_reprocess_accepts_ids(sim, source):
    event = store_event(source, parse_event(sim.update_user(some_user(sim)["userid"], name="ids", deliver=False)))[0]
    CallbackEvent.objects.filter(pk=event.pk).update(status=Status.FAILED, attempts=5, last_error="boom")
    assert events.reprocess_events([event.pk]) == 1
    event.refresh_from_db()
    assert (event.status, event.attempts, event.last_error) == (Status.APPLIED, 0, "")


@pytest.mark.worker
@pytest.mark.redis
@pytest.mark.postgres
def test_real_worker_applies_the_event_once_the_broker_is_back(
    require_postgres, redis_url, sim, source, unreachable_broker, tmp_path
):
    """Broker down at callback time; then a real Redis broker and a real Celery worker process take over."""
    import os
    import subprocess
    import sys
    import uuid
    from pathlib import Path

    from django.db import connection

    userid = some_user(sim)["userid"]
    sim.update_user(userid, name="worker applied")
    event = last_event()
    assert sim.deliveries[-1][1] == 200 and event.status == Status.PENDING

    queue = f"wecom-sync-test-{uuid.uuid4().hex[:8]}"
    db = connection.settings_dict
    (tmp_path / "worker_settings.py").write_text(
        "from tests.settings import *  # noqa: F403\n"
        f"DATABASES = {{'default': {{'ENGINE': {db['ENGINE']!r}, 'NAME': {db['NAME']!r}, 'USER': {db['USER']!r},"
        f" 'PASSWORD': {db['PASSWORD']!r}, 'HOST': {db['HOST']!r}, 'PORT': {db['PORT']!r}}}}}\n"
        f"CELERY_BROKER_URL = {redis_url!r}\nCELERY_TASK_ALWAYS_EAGER = False\n"
        f"CELERY_TASK_DEFAULT_QUEUE = {queue!r}\n",
        encoding="utf-8",
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "worker_settings",
           "PYTHONPATH": f"{tmp_path}:{root}"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "example_project", "worker", "--pool", "solo", "-Q", queue,
         "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "warning"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        app = unreachable_broker
        app.conf.broker_url = redis_url
        app.conf.task_default_queue = queue
        _reset_broker_pools(app)
        assert events.requeue_pending_events(now=timezone.now() + timedelta(seconds=61)) == 1
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            event.refresh_from_db()
            if event.status != Status.PENDING:
                break
            time.sleep(0.2)
        assert event.status == Status.APPLIED, event.last_error
        assert event.run.kind == "events"
        assert ExternalUser.objects.get(source=source, userid_key=userid.lower()).name == "worker applied"
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        import redis

        redis.Redis.from_url(redis_url).delete(queue)


@pytest.mark.django_db(transaction=True)
def test_a_rename_onto_a_userid_mapped_to_someone_else_is_not_a_success(sim, source):
    """WeCom still has both userids: the rename event cannot be applied, and the run must say so."""
    first, second = sorted(sim.org.users)[:2]
    event, _created = store_event(source, {"Event": "change_contact", "ChangeType": "update_user",
                                           "UserID": first, "NewUserID": second, "CreateTime": "1900000000"})
    events.process_event(event.pk)
    event.refresh_from_db()
    assert event.status != Status.APPLIED
    assert event.run.status == SyncRun.Status.PARTIAL
    assert event.run.changes.filter(action=SyncRunChange.Action.FAILED, external_id=second).exists()
    # Both members are still mirrored under their own userids.
    assert ExternalUser.objects.filter(source=source, userid_key__in=[first.lower(), second.lower()],
                                       is_removed=False).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_partly_failed_group_keeps_its_events_pending_until_all_is_applied(sim, source, monkeypatch):
    from wecom_sync.adapter import DefaultWeComAdapter

    old = sorted(sim.org.users)[0]
    new = old + ".moved"
    xml_update = sim.update_user(old, name="Before Rename", deliver=False)
    xml_rename = sim.rename_userid(old, new, deliver=False)
    sim.update_user(new, name="After Rename", deliver=False)
    real = DefaultWeComAdapter.populate_user
    failures = {"left": 1}

    def flaky(self, user, remote, **kwargs):
        if remote.userid == new and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("transient failure")
        return real(self, user, remote, **kwargs)

    monkeypatch.setattr(DefaultWeComAdapter, "populate_user", flaky)
    first, _ = store_event(source, parse_event(xml_update))
    second, _ = store_event(source, parse_event(xml_rename))
    events.process_event(first.pk)
    statuses = dict(CallbackEvent.objects.filter(pk__in=[first.pk, second.pk]).values_list("pk", "status"))
    assert statuses == {first.pk: Status.PENDING, second.pk: Status.PENDING}  # nothing claimed applied yet
    CallbackEvent.objects.filter(pk=first.pk).update(next_attempt_at=None)
    assert events.process_event(first.pk) == Status.APPLIED
    assert set(CallbackEvent.objects.filter(pk__in=[first.pk, second.pk]).values_list("status", flat=True)) == {
        Status.APPLIED}
    ext = ExternalUser.objects.get(source=source, userid_key=new.lower())
    assert ext.name == "After Rename"


# -- issue 12: events end where the next full sync would ------------------------------------------------


def _same_second(xml: str, create_time: str) -> str:
    return re.sub(r"<CreateTime>\d+</CreateTime>", f"<CreateTime>{create_time}</CreateTime>", xml)


def test_two_changes_to_one_member_in_the_same_second_are_both_applied(sim, source, live_server):
    """Point 7: the dedupe key is a digest of the whole message, not (CreateTime, ChangeType, UserID)."""
    userid = some_user(sim)["userid"]
    first_dept, second_dept = [d for d in sorted(sim.org.departments) if d != 1][:2]
    first = sim.move_user(userid, [first_dept])  # delivered and applied at once
    assert last_event().status == Status.APPLIED
    second = _same_second(sim.move_user(userid, [second_dept], deliver=False), _field(first, "CreateTime"))
    body, params = sim.build_callback(second)
    url = live_server.url + source.get_callback_path()
    requests.post(url, params=params, data=body.encode(), timeout=10).raise_for_status()
    assert CallbackEvent.objects.count() == 2
    ext = ExternalUser.objects.get(source=source, userid_key=userid.lower())
    assert list(ext.memberships.values_list("department__department_id", flat=True)) == [second_dept]
    # WeCom's retry of the same message is still deduplicated.
    body, params = sim.build_callback(second)
    requests.post(url, params=params, data=body.encode(), timeout=10).raise_for_status()
    assert CallbackEvent.objects.count() == 2


@pytest.fixture
def scoped_sim():
    # max_depth=2: department 2 and every other department hang directly under the root.
    with WeComSimulator(generate_organisation(users=12, departments=6, seed=9, max_depth=2)) as simulator:
        yield simulator


@pytest.fixture
def scoped(scoped_sim, live_server):
    """A source that syncs only the subtree under department 2."""
    src = make_source(
        corp_id=scoped_sim.corp_id, secret=scoped_sim.app_secret, contact_sync_secret="",
        api_base_url=scoped_sim.base_url, agent_id=scoped_sim.agent_id, root_department_id=2,
    )
    assert run_full_sync(src).status == SyncRun.Status.SUCCEEDED
    scoped_sim.set_callback(live_server.url + src.get_callback_path(), TOKEN, AES_KEY)
    return src


def _next_full_sync_changes(source) -> list[tuple[str, str, str]]:
    run = run_full_sync(source)
    assert run.status == SyncRun.Status.SUCCEEDED, run.message
    return list(run.changes.values_list("object_type", "external_id", "action"))


def test_create_user_outside_the_synced_subtree_gets_no_account(scoped_sim, scoped):
    """Point 3: a member the full sync would not list is not created by an event either."""
    outside = 3
    assert outside not in scoped_sim.org.subtree(2)
    accounts = User.objects.count()
    scoped_sim.add_user({"userid": "elsewhere", "name": "Else Where", "department": [outside],
                         "email": "elsewhere@example.com"})
    assert last_event().status == Status.APPLIED
    assert not ExternalUser.objects.filter(source=scoped, userid_key="elsewhere").exists()
    assert User.objects.count() == accounts
    scoped_sim.add_user({"userid": "inside", "name": "In Side", "department": [2]})
    assert ExternalUser.objects.get(source=scoped, userid_key="inside").user.is_active
    assert _next_full_sync_changes(scoped) == []


def test_update_user_moving_a_member_out_of_the_subtree_removes_them(scoped_sim, scoped):
    """Point 3: moving out deactivates the account, as the next full sync would."""
    userid = next(u for u in scoped_sim.org.members(2) if scoped_sim.org.users[u]["status"] == 1)
    ext = ExternalUser.objects.get(source=scoped, userid_key=userid.lower())
    assert ext.user.is_active
    scoped_sim.move_user(userid, [3])
    ext.refresh_from_db()
    assert ext.is_removed and not ext.user.is_active
    assert not ext.memberships.exists()
    assert _next_full_sync_changes(scoped) == []
    scoped_sim.move_user(userid, [3, 2])  # back in: the same account again
    ext.refresh_from_db()
    assert not ext.is_removed and ext.user.is_active


def test_department_events_respect_the_subtree(scoped_sim, scoped):
    """Point 3: create_party outside is not mirrored; a department moving out or in takes its members along."""
    scoped_sim.set_app_scope([2])  # the app sees only the synced subtree: department/get outside is 60011
    scoped_sim.add_department({"id": 700, "name": "外部门", "parentid": 3})
    assert last_event().status == Status.APPLIED
    assert not ExternalDepartment.objects.filter(source=scoped, department_id=700).exists()
    scoped_sim.set_app_scope(None)
    scoped_sim.add_department({"id": 701, "name": "内部门", "parentid": 2})
    assert ExternalDepartment.objects.get(source=scoped, department_id=701).parent.department_id == 2
    scoped_sim.add_user({"userid": "mover", "name": "Mover", "department": [701]})
    scoped_sim.add_user({"userid": "outsider", "name": "Outsider", "department": [700]}, deliver=False)
    # 700 (with its member, who got no event of their own) moves into the subtree...
    scoped_sim.move_department(700, 701)
    assert not ExternalDepartment.objects.get(source=scoped, department_id=700).is_removed
    assert ExternalUser.objects.get(source=scoped, userid_key="outsider").user.is_active
    assert ExternalUser.objects.filter(source=scoped, userid_key="mover").exists()
    assert _next_full_sync_changes(scoped) == []
    # ...and 701, with 700 below it, moves out: both leave, their members lose their accounts.
    scoped_sim.move_department(701, 3)
    assert set(ExternalDepartment.objects.filter(source=scoped, department_id__in=[700, 701])
               .values_list("is_removed", flat=True)) == {True}
    for userid in ("mover", "outsider"):
        ext = ExternalUser.objects.get(source=scoped, userid_key=userid)
        assert ext.is_removed and not ext.user.is_active
    assert _next_full_sync_changes(scoped) == []


def test_a_member_event_that_mirrors_a_department_moved_in_brings_its_other_members(scoped_sim, scoped):
    """Point 3: the department's own event may come second; its members still end where a full sync puts them."""
    resident = next(u for u in scoped_sim.org.members(3) if u not in scoped_sim.org.members(2))
    assert not ExternalUser.objects.filter(source=scoped, userid_key=resident.lower()).exists()
    move = store_event(scoped, parse_event(scoped_sim.move_department(3, 2, deliver=False)))[0]
    newcomer = store_event(scoped, parse_event(scoped_sim.add_user(
        {"userid": "newcomer", "name": "Newcomer", "department": [3]}, deliver=False)))[0]
    assert events.process_event(newcomer.pk) == Status.APPLIED  # mirrors department 3 on its way
    assert events.process_event(move.pk) == Status.APPLIED
    assert ExternalUser.objects.get(source=scoped, userid_key=resident.lower()).memberships.filter(
        department__department_id=3).exists()
    assert _next_full_sync_changes(scoped) == []


def _post(sim, source, live_server, xml: str) -> CallbackEvent:
    body, params = sim.build_callback(xml)
    url = live_server.url + source.get_callback_path()
    requests.post(url, params=params, data=body.encode(), timeout=10).raise_for_status()
    return last_event()


def _let_the_rename_wait_expire(event: CallbackEvent) -> None:
    assert event.status == Status.PENDING
    past = timezone.now() - timedelta(seconds=events.RENAME_WAIT_SECONDS + 1)
    CallbackEvent.objects.filter(pk=event.pk).update(received_at=past, next_attempt_at=past)
    assert requeue_pending_events() == 1
    event.refresh_from_db()
    assert event.status == Status.APPLIED


def test_rename_chain_delivered_in_reverse_keeps_the_original_account(sim, source, live_server):
    """Point 9: B->C arrives before A->B; it waits for A->B, then both apply in order on A's account."""
    old = some_user(sim)["userid"]
    account = ExternalUser.objects.get(source=source, userid_key=old.lower()).user_id
    accounts = User.objects.count()
    first = sim.rename_userid(old, "step.b", deliver=False)
    second = sim.rename_userid("step.b", "step.c", deliver=False)
    later = _post(sim, source, live_server, second)
    assert later.status == Status.PENDING and later.next_attempt_at is not None  # waits for the earlier rename
    assert not ExternalUser.objects.filter(source=source, userid_key="step.c").exists()
    earlier = _post(sim, source, live_server, first)
    later.refresh_from_db()
    assert (earlier.status, later.status) == (Status.APPLIED, Status.APPLIED)
    ext = ExternalUser.objects.get(source=source, userid_key="step.c")
    assert ext.user_id == account and not ext.is_removed and User.objects.get(pk=account).is_active
    assert not ExternalUser.objects.filter(source=source, userid_key__in=[old.lower(), "step.b"]).exists()
    assert User.objects.count() == accounts  # no account was made for C
    assert not any(action == "created" for _t, _id, action in _next_full_sync_changes(source))


def test_rename_chain_in_reverse_after_the_wait_recognises_the_member(sim, source, live_server):
    """Point 9, A->B later than the wait: C is recognised by name and e-mail as the full sync would."""
    old = some_user(sim)["userid"]
    account = ExternalUser.objects.get(source=source, userid_key=old.lower()).user_id
    accounts = User.objects.count()
    first = sim.rename_userid(old, "step.b", deliver=False)
    second = sim.rename_userid("step.b", "step.c", deliver=False)
    _let_the_rename_wait_expire(_post(sim, source, live_server, second))
    assert ExternalUser.objects.get(source=source, userid_key="step.c").user_id == account
    assert _post(sim, source, live_server, first).status == Status.APPLIED
    ext = ExternalUser.objects.get(source=source, userid_key="step.c")
    assert ext.user_id == account and not ext.is_removed and ext.user.is_active
    assert User.objects.count() == accounts


def test_rename_chain_in_reverse_without_contacts_still_ends_on_the_original_account(sim, source, live_server):
    """Point 9, after the wait and nothing to recognise the member by: when A->B arrives, C is merged back."""
    old = some_user(sim)["userid"]
    account = ExternalUser.objects.get(source=source, userid_key=old.lower()).user_id
    first = sim.rename_userid(old, "step.b", deliver=False)
    second = sim.rename_userid("step.b", "step.c", deliver=False)
    sim.update_user("step.c", email="", mobile="", biz_mail="", deliver=False)
    _let_the_rename_wait_expire(_post(sim, source, live_server, second))
    assert _post(sim, source, live_server, first).status == Status.APPLIED
    ext = ExternalUser.objects.get(source=source, userid_key="step.c")
    assert ext.user_id == account and not ext.is_removed and ext.user.is_active
    assert ExternalUser.objects.filter(source=source, is_removed=False).count() == len(sim.org.users)
    # The account briefly made for C is deactivated, as for any member who left.
    assert not User.objects.filter(is_active=True).exclude(pk=account).filter(username__istartswith="step.").exists()


def test_rename_updates_leader_references(sim, source, mutate):
    """Point 12: departments' leaders and members' direct_leader follow a userid renamed by an event."""
    dept = next(d for d in sim.org.departments.values() if d.get("department_leader"))
    leader = dept["department_leader"][0]
    followers = [u for u, user in sim.org.users.items() if leader in (user.get("direct_leader") or ())]
    assert followers
    mutate("rename_userid", leader, "the.new.boss")
    local = ExternalDepartment.objects.get(source=source, department_id=dept["id"])
    assert "the.new.boss" in local.leaders and leader not in local.leaders
    for userid in followers:
        raw = ExternalUser.objects.get(source=source, userid_key=userid.lower()).raw
        assert "the.new.boss" in raw["direct_leader"] and leader not in raw["direct_leader"]
    # WeCom changed them the same way: the next full sync finds nothing to rewrite (rule 10).
    assert _next_full_sync_changes(source) == []
