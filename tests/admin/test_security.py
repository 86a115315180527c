"""Issue 11: the admin and the API client as an attacker with some admin rights would try them.

Real simulators over HTTP (a second one stands for a host of the attacker's), a real loopback server for a
hostile API host, the real admin through Django's test client.
"""

from __future__ import annotations

import http.server
import json
import threading

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client, override_settings
from django.urls import reverse

from tests.factories import AES_KEY, TOKEN, make_source
from wecom_sync import services
from wecom_sync.callbacks import parse_event, store_event
from wecom_sync.client import WeComClient
from wecom_sync.crypto import WeComCrypto
from wecom_sync.exceptions import WeComError
from wecom_sync.models import CallbackEvent, ExternalUser, SyncRun, SyncSource
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = pytest.mark.django_db

User = get_user_model()
APP_SECRET = "sec-app-secret-Qm2Xv9Lp4Kd8Rz1Ab"


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=10, departments=3, seed=5), app_secret=APP_SECRET) as s:
        yield s


@pytest.fixture
def evil():
    """A second simulator on another port: a host of the attacker's."""
    with WeComSimulator(generate_organisation(users=2, departments=1, seed=9)) as s:
        yield s


@pytest.fixture
def source(sim):
    return make_source(corp_id=sim.corp_id, secret=APP_SECRET, contact_sync_secret="", api_base_url=sim.base_url,
                       token=TOKEN, encoding_aes_key=AES_KEY)


def user_with(*codenames: str, username: str = "staffer") -> Client:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="wecom_sync", codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def form_post(source: SyncSource, **overrides) -> dict:
    data = {
        "name": source.name, "slug": source.slug, "corp_id": source.corp_id, "agent_id": source.agent_id or "",
        "secret": "", "contact_sync_secret": "", "token": "", "encoding_aes_key": "",
        "api_base_url": source.api_base_url, "enabled": "on", "root_department_id": source.root_department_id,
        "fetch_strategy": source.fetch_strategy, "sync_interval_minutes": source.sync_interval_minutes,
        "removal_policy": source.removal_policy, "removal_threshold_count": source.removal_threshold_count,
        "removal_threshold_percent": source.removal_threshold_percent,
    }
    data.update(overrides)
    return data


def secrets_of(source: SyncSource) -> list[str]:
    return [APP_SECRET, TOKEN, AES_KEY]


# -- point 2: the API base URL cannot redirect secrets ---------------------------------------------------


def test_change_only_user_cannot_send_the_secret_to_another_host(sim, evil, source, live_server):
    client = user_with("view_syncsource", "change_syncsource")
    url = reverse("admin:wecom_sync_syncsource_change", args=[source.pk])
    page = client.get(url).content.decode()
    assert "entering every secret again" in page  # the form says so

    response = client.post(url, form_post(source, api_base_url=evil.base_url))
    assert response.status_code == 200  # the form is shown again, with errors
    assert "enter this secret again" in response.content.decode()
    response = client.post(url, form_post(source, corp_id="wwattacker0000001", api_base_url=evil.base_url))
    assert "enter this secret again" in response.content.decode()
    fresh = SyncSource.objects.get(pk=source.pk)
    assert (fresh.api_base_url, fresh.corp_id) == (sim.base_url, source.corp_id)

    # What the attacker waited for: a sync, someone else's Sync now, a callback. Nothing reaches evil.
    assert services.run_full_sync(fresh).status == SyncRun.Status.SUCCEEDED
    sim.set_callback(live_server.url + fresh.get_callback_path(), TOKEN, AES_KEY)
    sim.add_user({"userid": "late", "name": "Late", "department": [1]})
    assert sum(evil.calls.values()) == 0

    # With every secret entered again the change is accepted: those are the attacker's own secrets.
    response = client.post(url, form_post(source, api_base_url=evil.base_url, secret=evil.app_secret,
                                          token=TOKEN, encoding_aes_key=AES_KEY))
    assert response.status_code == 302
    assert SyncSource.objects.get(pk=source.pk).secret == evil.app_secret
    assert sum(evil.calls.values()) == 0


def test_api_hosts_limit_the_form_and_the_client(sim, evil, source):
    sim_port = sim.base_url.rsplit(":", 1)[1]
    only_sim = {"API_HOSTS": [f"127.0.0.1:{sim_port}"]}
    client = user_with("view_syncsource", "change_syncsource")
    url = reverse("admin:wecom_sync_syncsource_change", args=[source.pk])
    with override_settings(WECOM_SYNC={**_settings(), **only_sim}):
        response = client.post(url, form_post(source, api_base_url=evil.base_url, secret="x" * 20, token=TOKEN,
                                              encoding_aes_key=AES_KEY))
        assert "not allowed for the WeCom API" in response.content.decode()
        for bad in ("http://user:pw@127.0.0.1:1", f"{sim.base_url}?x=1", "ftp://127.0.0.1"):
            response = client.post(url, form_post(source, api_base_url=bad, secret="x" * 20, token=TOKEN,
                                                  encoding_aes_key=AES_KEY))
            assert response.status_code == 200, bad
        # The row changed behind the form's back (raw SQL, another tool): the client refuses to call.
        SyncSource.objects.filter(pk=source.pk).update(api_base_url=evil.base_url)
        run = services.run_full_sync(SyncSource.objects.get(pk=source.pk))
        assert run.status == SyncRun.Status.FAILED
        assert "not on an allowed host" in run.message
        with pytest.raises(WeComError):
            WeComClient("wwx", "s", base_url=evil.base_url)
    assert sum(evil.calls.values()) == 0
    assert WeComClient("wwx", "s", base_url="https://qyapi.weixin.qq.com").base_url  # default host allowed


def _settings() -> dict:
    from django.conf import settings

    return dict(settings.WECOM_SYNC)


def test_token_cache_key_includes_the_base_url(sim, evil):
    a = WeComClient(sim.corp_id, APP_SECRET, base_url=sim.base_url)
    b = WeComClient(sim.corp_id, APP_SECRET, base_url=evil.base_url)
    assert a._token_key != b._token_key
    a.get_access_token()
    assert b._cached_token() is None  # a token fetched from one host is never offered to another


class _Hostile(http.server.BaseHTTPRequestHandler):
    mode = "redirect"

    def do_GET(self):  # noqa: N802
        if _Hostile.mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/stolen")
            self.end_headers()
        elif _Hostile.mode == "huge":
            body = b'{"errcode":0,"pad":"' + b"x" * 3_000_000 + b'"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()  # no Content-Length: the bound must hold while reading
            self.wfile.write(body)
        else:
            body = json.dumps({"errcode": 40013, "errmsg": "<script>x</script>" + "y" * 5000}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):  # noqa: ANN002
        pass


@pytest.fixture
def hostile():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_client_follows_no_redirect_refuses_huge_bodies_and_bounds_errmsg(hostile):
    client = WeComClient("wwx", "s3cret", base_url=hostile)
    _Hostile.mode = "redirect"
    with pytest.raises(WeComError, match="redirect"):
        client.get_access_token()
    _Hostile.mode = "huge"
    with override_settings(WECOM_SYNC={**_settings(), "API_MAX_RESPONSE_BYTES": 1_000_000}), \
            pytest.raises(WeComError, match="larger than"):
        client.get_access_token()
    _Hostile.mode = "errmsg"
    with pytest.raises(WeComError) as info:
        client.get_access_token()
    text = str(info.value)
    assert len(info.value.errmsg) <= 200 and "<script>" not in text and len(text) < 600


# -- point 3 and 8: view-only users, bad ids -----------------------------------------------------------------


@pytest.fixture
def populated(sim, source):
    assert services.run_full_sync(source).status == SyncRun.Status.SUCCEEDED
    held = SyncRun.objects.create(source=source, status=SyncRun.Status.HELD)
    crypto = WeComCrypto(TOKEN, AES_KEY, source.corp_id)
    assert crypto
    store_event(source, parse_event(
        "<xml><ToUserName>x</ToUserName><CreateTime>1</CreateTime><MsgType>event</MsgType>"
        "<Event>change_contact</Event><ChangeType>update_user</ChangeType><UserID>u1</UserID></xml>"))
    return source, held


def app_urls() -> list[str]:
    urls = []
    for model in admin.site._registry:
        if model._meta.app_label != "wecom_sync":
            continue
        name = f"admin:wecom_sync_{model._meta.model_name}"
        urls.append(reverse(f"{name}_changelist"))
        for pk in model._default_manager.values_list("pk", flat=True)[:3]:
            urls += [reverse(f"{name}_change", args=[pk]), reverse(f"{name}_history", args=[pk])]
    urls.append(reverse("admin:wecom_sync_externaldepartment_tree"))
    return urls


def test_every_admin_page_renders_for_a_view_only_user_without_secrets(populated):
    source, held = populated
    codenames = [f"view_{m._meta.model_name}" for m in admin.site._registry if m._meta.app_label == "wecom_sync"]
    client = user_with(*codenames)
    for url in app_urls() + [reverse("admin:wecom_sync_syncrun_progress", args=[held.pk])]:
        response = client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        for secret in secrets_of(source):
            assert secret not in html, url
    page = client.get(reverse("admin:wecom_sync_syncsource_change", args=[source.pk])).content.decode()
    assert "••••••••" in page  # the masked status
    assert 'name="secret"' not in page


BAD_IDS = ["abc", "999999", "-1", "1.5", "%00", "1%20OR%201=1"]


def test_bad_ids_in_any_admin_url_are_404_or_a_redirect(populated):
    root = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(root)
    for model in admin.site._registry:
        if model._meta.app_label != "wecom_sync":
            continue
        base = f"/admin/wecom_sync/{model._meta.model_name}/"
        for bad in BAD_IDS:
            for suffix in ("change/", "history/", "delete/", "progress/", "link/", ""):
                response = client.get(f"{base}{bad}/{suffix}")
                assert response.status_code in (301, 302, 403, 404), (base, bad, suffix, response.status_code)
            for suffix in ("approve/", "reject/", "retry/", "sync/", "dry-run/", "test-connection/"):
                response = client.post(f"{base}{bad}/{suffix}")
                assert response.status_code in (301, 302, 403, 404), (base, bad, suffix, response.status_code)


# -- point 6: a bad key fails one source, not the site --------------------------------------------------------


def test_unreadable_secrets_keep_the_admin_up_and_fail_the_sync(populated, sim):
    with override_settings(WECOM_SYNC={**_settings(), "ENCRYPTION_KEYS": ["gone-key-0123456789abcdef0123456789"]}):
        lost = make_source(slug="lost", corp_id=sim.corp_id, api_base_url=sim.base_url, secret=APP_SECRET)
    root = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(root)
    message = "stored secrets cannot be decrypted with the configured keys: enter them again"
    for url in app_urls():
        assert client.get(url).status_code == 200, url
    assert message in client.get(reverse("admin:wecom_sync_syncsource_changelist")).content.decode()
    page = client.get(reverse("admin:wecom_sync_syncsource_change", args=[lost.pk])).content.decode()
    assert message in page
    run = services.run_full_sync(SyncSource.objects.get(pk=lost.pk))
    assert run.status == SyncRun.Status.FAILED and run.message == message
    assert services.run_full_sync(populated[0]).status == SyncRun.Status.SUCCEEDED  # the others work
    # Entering the secrets again mends it.
    url = reverse("admin:wecom_sync_syncsource_change", args=[lost.pk])
    response = client.post(url, form_post(lost, secret="x" * 20))
    assert response.status_code == 200 and message in response.content.decode()
    response = client.post(url, form_post(lost, secret=APP_SECRET, token=TOKEN, encoding_aes_key=AES_KEY,
                                          contact_sync_secret="contact-0123456789abcdef"))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert SyncSource.objects.get(pk=lost.pk).secrets_readable


# -- point 9: the admin history ------------------------------------------------------------------------------


def test_history_names_only_changed_secrets_and_records_actions(populated):
    source, held = populated
    root = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(root)
    url = reverse("admin:wecom_sync_syncsource_change", args=[source.pk])
    assert client.post(url, form_post(source, name="Renamed")).status_code == 302
    assert client.post(url, form_post(source, name="Renamed", token="NewTok3nQw8Er5Ty2Ui9Op4")).status_code == 302
    entries = list(LogEntry.objects.filter(object_id=str(source.pk)).order_by("pk"))
    first, second = (e.get_change_message() for e in entries[-2:])
    assert "Name" in first and "Secret" not in first and "Token" not in first
    assert "Token" in second and "Secret" not in second and "EncodingAESKey" not in second

    def last_entry(obj) -> str:
        entry = LogEntry.objects.filter(object_id=str(obj.pk), content_type__model=obj._meta.model_name).order_by(
            "-pk").first()
        assert entry is not None and entry.user_id == root.pk
        return entry.get_change_message()

    client.post(reverse("admin:wecom_sync_syncsource_sync", args=[source.pk]))
    assert "Started a sync" in last_entry(source)
    client.post(reverse("admin:wecom_sync_syncsource_dryrun", args=[source.pk]))
    assert "Started a dry run" in last_entry(source)
    held = SyncRun.objects.create(source=source, status=SyncRun.Status.HELD)  # a new sync superseded the first
    client.post(reverse("admin:wecom_sync_syncrun_reject", args=[held.pk]))
    assert "Rejected" in last_entry(held)
    other = SyncRun.objects.create(source=source, status=SyncRun.Status.HELD)
    client.post(reverse("admin:wecom_sync_syncrun_approve", args=[other.pk]))
    assert "Approved" in last_entry(other)
    failed = SyncRun.objects.create(source=source, status=SyncRun.Status.FAILED)
    client.post(reverse("admin:wecom_sync_syncrun_retry", args=[failed.pk]))
    assert "Retried" in last_entry(failed)
    event = CallbackEvent.objects.first()
    client.post(reverse("admin:wecom_sync_callbackevent_changelist"),
                {"action": "reprocess_action", "_selected_action": [event.pk]})
    assert "Reprocessed" in last_entry(event)


def test_manual_link_is_recorded_and_guarded(populated):
    source, _held = populated
    ext = ExternalUser.objects.filter(source=source).first()
    target = User.objects.create_user("kept.account", "kept@corp.example", "pw")
    admin_account = User.objects.create_user("ops", "ops@corp.example", "pw", is_staff=True)
    client = user_with("view_externaluser", "change_externaluser", username="linker")
    url = reverse("admin:wecom_sync_externaluser_link", args=[ext.pk])
    assert client.get(url).status_code == 200
    response = client.post(url, {"username": "ops"})
    assert "Only a superuser" in response.content.decode()
    assert ExternalUser.objects.get(pk=ext.pk).user_id != admin_account.pk
    assert client.post(url, {"username": "kept.account"}).status_code == 302
    ext.refresh_from_db()
    assert (ext.user_id, ext.account_origin) == (target.pk, ExternalUser.AccountOrigin.MANUAL)
    entry = LogEntry.objects.filter(object_id=str(ext.pk)).order_by("-pk").first()
    assert "Linked by hand" in entry.get_change_message() and entry.user.username == "linker"
    # a view-only user cannot link
    viewer = user_with("view_externaluser", username="viewer")
    assert viewer.post(url, {"username": "kept.account"}).status_code == 403
    # the sync keeps the manual account's email
    services.run_full_sync(source)
    target.refresh_from_db()
    assert target.email == "kept@corp.example" and target.username == "kept.account"
