"""Sign in with WeCom against the simulator over real HTTP: the Django test client starts the sign-in, the
browser's part at "WeCom" (the authorize redirect, the web-login page) is played with ``requests`` against the
simulator, and the redirect back comes into the test client again."""

from __future__ import annotations

import logging
import re
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from tests.factories import make_source
from wecom_sync import services
from wecom_sync.auth import BACKEND_PATH, OAuthCode
from wecom_sync.models import ExternalUser, SyncRun, SyncSource
from wecom_sync.simulator import WeComSimulator, generate_organisation
from wecom_sync.simulator.login import AUTHORIZE_PATH, CONFIRM_PATH, WEB_LOGIN_PATH

pytestmark = pytest.mark.django_db

User = get_user_model()
CLIENT_UA = "Mozilla/5.0 (iPhone) AppleWebKit/605.1.15 wxwork/4.1.22 MicroMessenger/7.0.1 Language/zh"


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=30, departments=6, seed=11)) as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def login_settings(settings, sim):
    settings.WECOM_SYNC = {
        **settings.WECOM_SYNC,
        "OAUTH_AUTHORIZE_URL": sim.base_url + AUTHORIZE_PATH,
        "WEB_LOGIN_URL": sim.base_url + WEB_LOGIN_PATH,
    }
    settings.LOGIN_REDIRECT_URL = "/landing/"
    cache.clear()  # used codes are remembered in the cache


@pytest.fixture
def source(sim) -> SyncSource:
    source = make_source(
        slug="acme", api_base_url=sim.base_url, corp_id=sim.corp_id, agent_id=sim.agent_id,
        secret=sim.app_secret, contact_sync_secret="", login_enabled=True,
    )
    run = services.run_full_sync(source)
    assert run.status == SyncRun.Status.SUCCEEDED, run.message
    return source


def active_userid(sim: WeComSimulator) -> str:
    return next(u for u in sorted(sim.org.users) if sim.org.users[u].get("status") == 1)


def account(source: SyncSource, userid: str):  # noqa: ANN201
    return ExternalUser.objects.get(source=source, userid_key=userid.lower()).user


def start(client: Client, source: SyncSource, next_url: str | None = "/admin/", **headers: str) -> str:
    """Start a sign-in; return the WeCom URL the site redirects to."""
    url = reverse("wecom_sync:login", kwargs={"slug": source.slug})
    response = client.get(url, {"next": next_url} if next_url is not None else {}, **headers)
    assert response.status_code == 302, response.content[:500]
    return response["Location"]


def pick_member(location: str, userid: str) -> str:
    """Play the person at the simulator's web-login page: open it, pick the member; return the site's URL."""
    page = requests.get(location, timeout=10)
    assert page.status_code == 200, page.text
    fields = {unescape(n): unescape(v) for n, v in re.findall(r"name='([^']+)' value='([^']*)'", page.text)
              if n != "userid"}
    assert f"data-userid='{userid}'" in page.text or userid not in page.text
    back = requests.post(page.url.split("?")[0].replace(WEB_LOGIN_PATH, CONFIRM_PATH).replace(
        AUTHORIZE_PATH, CONFIRM_PATH), data={**fields, "typed_userid": userid}, allow_redirects=False, timeout=10)
    assert back.status_code == 302, back.text
    return back.headers["Location"]


def come_back(client: Client, url: str):  # noqa: ANN201
    """Follow WeCom's redirect back into the site (the test client serves http://testserver)."""
    parts = urlsplit(url)
    assert parts.netloc == "testserver", url
    return client.get(f"{parts.path}?{parts.query}")


def qr_login(client: Client, source: SyncSource, userid: str, next_url: str | None = "/admin/"):  # noqa: ANN201
    return come_back(client, pick_member(start(client, source, next_url), userid))


def reason_of(response) -> str:  # noqa: ANN001
    match = re.search(r'data-reason="([a-z_]+)"', response.content.decode())
    return match.group(1) if match else ""


def logged_in_as(client: Client):  # noqa: ANN201
    pk = client.session.get("_auth_user_id")
    return User.objects.get(pk=pk) if pk else None


# -- full sign-ins ------------------------------------------------------------------------------------------


def test_inside_the_wecom_client_the_oauth2_redirect_signs_the_member_in(client, sim, source):
    userid = active_userid(sim)
    user = account(source, userid)
    user.is_staff = True
    user.save()
    fired = []
    user_logged_in.connect(lambda sender, user, request, **kw: fired.append(user.pk), weak=False,
                           dispatch_uid="test-login-fired")
    try:
        location = start(client, source, "/admin/", HTTP_USER_AGENT=CLIENT_UA)
        parts = urlsplit(location)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == sim.base_url + AUTHORIZE_PATH
        assert parts.fragment == "wechat_redirect"
        query = parse_qs(parts.query)
        assert [k.split("=")[0] for k in parts.query.split("&")] == [
            "appid", "redirect_uri", "response_type", "scope", "state", "agentid"]
        assert query["appid"] == [sim.corp_id]
        assert query["redirect_uri"] == ["http://testserver/wecom/login/acme/callback/"]
        assert query["response_type"] == ["code"] and query["scope"] == ["snsapi_base"]
        assert query["agentid"] == [str(sim.agent_id)]
        assert len(query["state"][0]) >= 16

        sim.login.client_userid = userid.upper()  # userids are case-insensitive
        back = requests.get(location, allow_redirects=False, timeout=10)
        assert back.status_code == 302
        response = come_back(client, back.headers["Location"])
    finally:
        user_logged_in.disconnect(dispatch_uid="test-login-fired")
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert logged_in_as(client) == user
    assert client.session["_auth_user_backend"] == BACKEND_PATH
    assert fired == [user.pk]
    assert sim.calls["/cgi-bin/auth/getuserinfo"] == 1
    assert client.get("/admin/").status_code == 200


def test_in_another_browser_the_web_login_qr_page_signs_the_member_in(client, sim, source):
    userid = active_userid(sim)
    user = account(source, userid)
    user.is_staff = True
    user.save()
    location = start(client, source, "/admin/")
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == sim.base_url + WEB_LOGIN_PATH
    query = parse_qs(parts.query)
    assert query["login_type"] == ["CorpApp"] and query["appid"] == [sim.corp_id]
    assert query["agentid"] == [str(sim.agent_id)]
    assert query["redirect_uri"] == ["http://testserver/wecom/login/acme/callback/"]
    assert len(query["state"][0]) >= 16

    response = come_back(client, pick_member(location, userid))
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert logged_in_as(client) == user
    index = client.get("/admin/")
    assert index.status_code == 200 and (user.get_short_name() or user.get_username()) in index.content.decode()


def test_silent_sign_in_off_sends_the_client_to_the_web_login_and_login_agent_id_wins(client, sim, source):
    source.login_silent_in_client = False
    source.agent_id = 999
    source.login_agent_id = sim.agent_id
    source.save()
    location = start(client, source, "/admin/", HTTP_USER_AGENT=CLIENT_UA)
    assert urlsplit(location).path == WEB_LOGIN_PATH
    assert parse_qs(urlsplit(location).query)["agentid"] == [str(sim.agent_id)]
    assert come_back(client, pick_member(location, active_userid(sim))).status_code == 302
    assert logged_in_as(client) is not None


def test_the_older_userid_key_of_getuserinfo_is_understood(client, sim, source):
    sim.login.legacy_userid_key = True
    userid = active_userid(sim)
    assert qr_login(client, source, userid).status_code == 302
    assert logged_in_as(client) == account(source, userid)


# -- state and code -------------------------------------------------------------------------------------------


def test_a_tampered_state_is_refused(client, sim, source):
    back = pick_member(start(client, source), active_userid(sim))
    tampered = re.sub(r"state=([^&]+)", lambda m: "state=" + m.group(1)[:-2] + "xx", back)
    response = come_back(client, tampered)
    assert response.status_code == 400 and reason_of(response) == "state_invalid"
    assert logged_in_as(client) is None
    assert sim.calls["/cgi-bin/auth/getuserinfo"] == 0  # refused before the code was spent


def test_a_state_from_another_browser_is_refused(client, sim, source):
    back = pick_member(start(client, source), active_userid(sim))
    other = Client()
    response = come_back(other, back)
    assert response.status_code == 400 and reason_of(response) == "state_invalid"
    assert "_auth_user_id" not in other.session


def test_a_replayed_state_is_refused(client, sim, source):
    userid = active_userid(sim)
    back = pick_member(start(client, source), userid)
    assert come_back(client, back).status_code == 302
    client.logout()
    replay = come_back(client, back)
    assert replay.status_code == 400 and reason_of(replay) == "state_invalid"
    assert logged_in_as(client) is None


def test_an_expired_state_is_refused(client, sim, source, settings):
    back = pick_member(start(client, source), active_userid(sim))
    session = client.session
    for entry in session["wecom_sync_login"].values():
        entry["at"] -= 3600
    session.save()
    response = come_back(client, back)
    assert response.status_code == 400 and reason_of(response) == "state_expired"


def test_a_code_is_used_once(client, sim, source):
    userid = active_userid(sim)
    first = pick_member(start(client, source), userid)
    assert come_back(client, first).status_code == 302
    client.logout()
    # The same code with a fresh, valid state: the site remembers it was used and does not even ask WeCom.
    code = parse_qs(urlsplit(first).query)["code"][0]
    fresh = pick_member(start(client, source), userid)
    reused = re.sub(r"code=[^&]+", "code=" + code, fresh)
    response = come_back(client, reused)
    assert response.status_code == 400 and reason_of(response) == "code_reused"
    assert sim.calls["/cgi-bin/auth/getuserinfo"] == 1
    assert logged_in_as(client) is None
    # A site whose cache forgot it (another worker, no shared cache): WeCom itself refuses the code.
    cache.clear()
    again = pick_member(start(client, source), userid)
    response = come_back(client, re.sub(r"code=[^&]+", "code=" + code, again))
    assert response.status_code == 400 and reason_of(response) == "code_invalid"
    assert "40029" in response.content.decode()
    assert logged_in_as(client) is None


def test_a_missing_code_is_refused(client, sim, source):
    back = pick_member(start(client, source), active_userid(sim))
    response = come_back(client, re.sub(r"code=[^&]+&?", "", back))
    assert response.status_code == 400 and reason_of(response) == "code_missing"


# -- who may sign in ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [2, 5])
def test_a_disabled_or_departed_member_cannot_sign_in(client, sim, source, status):
    userid = active_userid(sim)
    sim.set_user_status(userid, status, deliver=False)
    services.run_full_sync(source)
    response = qr_login(client, source, userid)
    assert response.status_code == 403 and reason_of(response) == "member_status"
    assert logged_in_as(client) is None


def test_a_not_activated_member_signs_in_only_when_the_setting_allows(client, sim, source, settings):
    userid = active_userid(sim)
    sim.set_user_status(userid, 4, deliver=False)
    services.run_full_sync(source)
    assert qr_login(client, source, userid).status_code == 302
    client.logout()
    settings.WECOM_SYNC = {**settings.WECOM_SYNC, "NOT_ACTIVATED_USERS_ACTIVE": False}
    response = qr_login(client, source, userid)
    assert reason_of(response) == "member_status"


def test_a_member_deleted_from_the_directory_is_not_a_member(client, sim, source):
    userid = active_userid(sim)
    location = start(client, source)
    back = pick_member(location, userid)
    sim.delete_user(userid, deliver=False)  # gone before the site asks WeCom: getuserinfo answers an openid
    response = come_back(client, back)
    assert response.status_code == 403 and reason_of(response) == "not_member"


def test_a_removed_mapping_cannot_sign_in(client, sim, source):
    userid = active_userid(sim)
    root = sorted(d for d in sim.org.departments if d != 1)[0]
    sim.move_user(userid, [1], deliver=False)  # the member now sits outside the subtree the source mirrors
    source.root_department_id = root
    source.removal_threshold_percent = 100
    source.removal_threshold_count = 1000
    source.save()
    services.run_full_sync(source)
    assert ExternalUser.objects.get(source=source, userid_key=userid.lower()).is_removed
    response = qr_login(client, source, userid)
    assert response.status_code == 403 and reason_of(response) == "mapping_removed"


def test_a_deactivated_account_cannot_sign_in(client, sim, source):
    userid = active_userid(sim)
    user = account(source, userid)
    user.is_active = False
    user.save()
    response = qr_login(client, source, userid)
    assert response.status_code == 403 and reason_of(response) == "account_inactive"
    assert logged_in_as(client) is None


def test_a_source_with_sign_in_off_or_disabled_refuses(client, sim, source):
    source.login_enabled = False
    source.save()
    url = reverse("wecom_sync:login", kwargs={"slug": source.slug})
    assert client.get(url).status_code == 404
    source.login_enabled = True
    source.save()
    back = pick_member(start(client, source), active_userid(sim))
    source.enabled = False
    source.save()
    response = come_back(client, back)
    assert response.status_code == 404 and reason_of(response) == "source_unavailable"
    assert client.get(reverse("wecom_sync:login", kwargs={"slug": "nope"})).status_code == 404


# -- next --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("evil", ["https://evil.example/", "//evil.example/x", "http://testserver.evil.example/",
                                  "javascript:alert(1)", "/\\evil.example"])
def test_next_never_leaves_the_site(client, sim, source, evil):
    response = qr_login(client, source, active_userid(sim), next_url=evil)
    assert response.status_code == 302
    assert response["Location"] == "/landing/"
    assert logged_in_as(client) is not None


def test_next_on_this_site_is_kept(client, sim, source):
    response = qr_login(client, source, active_userid(sim), next_url="/admin/auth/user/?o=1")
    assert response["Location"] == "/admin/auth/user/?o=1"


# -- members not mirrored yet ------------------------------------------------------------------------------------


NEWCOMER = {"userid": "Li.Newcomer", "name": "李新", "department": [1], "status": 1, "email": "li@example.com"}


def test_a_member_not_mirrored_yet_is_refused_by_default(client, sim, source):
    sim.add_user(dict(NEWCOMER), deliver=False)
    users_before = User.objects.count()
    response = qr_login(client, source, "li.newcomer")
    assert response.status_code == 403 and reason_of(response) == "not_mapped"
    assert User.objects.count() == users_before
    assert sim.calls["/cgi-bin/user/get"] == 0


def test_with_login_create_users_a_new_member_is_provisioned_like_a_sync_would(client, sim, source, settings):
    settings.WECOM_SYNC = {**settings.WECOM_SYNC, "LOGIN_CREATE_USERS": True}
    dept = sorted(d for d in sim.org.departments if d != 1)[0]
    sim.add_user({**NEWCOMER, "department": [dept], "main_department": dept}, deliver=False)
    response = qr_login(client, source, "li.newcomer")
    assert response.status_code == 302, response.content[:800]
    ext = ExternalUser.objects.get(source=source, userid_key="li.newcomer")
    assert ext.account_origin == ExternalUser.AccountOrigin.CREATED
    assert ext.userid == "Li.Newcomer" and not ext.is_removed
    assert list(ext.memberships.values_list("department__department_id", flat=True)) == [dept]
    user = ext.user
    assert logged_in_as(client) == user
    assert user.get_username() == "Li.Newcomer" and user.first_name == "李新" and user.is_active
    assert not user.has_usable_password()
    run = SyncRun.objects.filter(source=source, trigger=SyncRun.Trigger.LOGIN).get()
    assert run.status == SyncRun.Status.SUCCEEDED and run.counters.get("users_created") == 1
    # The next full sync sees nothing to change: a login-created account is one a sync would have made.
    later = services.run_full_sync(source)
    assert later.counters.get("users_created", 0) == 0 and later.counters.get("users_updated", 0) == 0
    assert ExternalUser.objects.get(source=source, userid_key="li.newcomer").user == user


def test_with_login_create_users_a_member_outside_the_synced_subtree_is_refused(client, sim, source, settings):
    settings.WECOM_SYNC = {**settings.WECOM_SYNC, "LOGIN_CREATE_USERS": True}
    root = sorted(d for d in sim.org.departments if d != 1 and sim.org.subtree(d) != list(sim.org.departments))[0]
    outside = next(d for d in sorted(sim.org.departments) if d not in sim.org.subtree(root))
    source.root_department_id = root
    source.removal_threshold_percent = 100
    source.removal_threshold_count = 1000
    source.save()
    services.run_full_sync(source)  # the mirror is now the subtree of `root`
    sim.add_user({**NEWCOMER, "department": [outside]}, deliver=False)
    users_before = User.objects.count()
    response = qr_login(client, source, "li.newcomer")
    assert response.status_code == 403 and reason_of(response) == "outside_scope"
    assert User.objects.count() == users_before
    assert not ExternalUser.objects.filter(source=source, userid_key="li.newcomer").exists()


def test_with_login_create_users_a_disabled_new_member_is_not_provisioned(client, sim, source, settings):
    settings.WECOM_SYNC = {**settings.WECOM_SYNC, "LOGIN_CREATE_USERS": True}
    sim.add_user({**NEWCOMER, "status": 2}, deliver=False)
    response = qr_login(client, source, "li.newcomer")
    assert reason_of(response) == "member_status"
    assert not ExternalUser.objects.filter(source=source, userid_key="li.newcomer").exists()


# -- errors shown with WeCom's hint -------------------------------------------------------------------------------


def test_an_untrusted_ip_is_explained_with_the_ip_wecom_saw(client, sim, source):
    sim.faults.fail_next(60020, path="auth/getuserinfo")
    response = qr_login(client, source, active_userid(sim))
    body = response.content.decode()
    assert response.status_code == 502 and reason_of(response) == "ip_not_trusted"
    assert "60020" in body and "127.0.0.1" in body and "trusted IP" in body
    assert logged_in_as(client) is None


def test_the_error_page_speaks_the_readers_language(client, sim, source):
    sim.faults.fail_next(60020, path="auth/getuserinfo")
    client.cookies["django_language"] = "zh-hans"
    response = qr_login(client, source, active_userid(sim))
    body = response.content.decode()
    assert reason_of(response) == "ip_not_trusted"
    assert "企业可信IP" in body and "127.0.0.1" in body and 'lang="zh-hans"' in body
    assert "This server is not allowed" not in body


def test_an_untrusted_redirect_domain_is_explained(client, sim, source):
    sim.faults.fail_next(50001, path="auth/getuserinfo")
    response = qr_login(client, source, active_userid(sim))
    assert reason_of(response) == "untrusted_domain" and "50001" in response.content.decode()
    assert "WW_verify" in response.content.decode()


def test_a_member_outside_the_apps_visible_range_is_explained(client, sim, source):
    userid = active_userid(sim)
    dept = sim.org.users[userid]["department"][0]
    sim.set_app_scope([d for d in sim.org.departments if d != 1 and dept not in sim.org.subtree(d)][:1] or [999])
    response = qr_login(client, source, userid)
    assert response.status_code == 403 and reason_of(response) == "outside_visible_range"
    assert "50002" in response.content.decode() and "visible range" in response.content.decode()


def test_the_simulator_refuses_a_redirect_outside_the_trusted_domain(client, sim, source):
    sim.login.trusted_hosts = {"hr.example.com"}
    page = requests.get(start(client, source), timeout=10)
    assert page.status_code == 400 and "trusted domain" in page.text


# -- secrets and logs ---------------------------------------------------------------------------------------------


def test_failed_sign_ins_are_logged_by_reason_without_personal_data_or_code(client, sim, source, caplog):
    userid = active_userid(sim)
    user = account(source, userid)
    user.is_active = False
    user.save()
    failed = []
    user_login_failed.connect(lambda sender, credentials, **kw: failed.append(credentials), weak=False,
                              dispatch_uid="test-login-failed")
    caplog.set_level(logging.DEBUG)
    try:
        back = pick_member(start(client, source), userid)
        come_back(client, back)
    finally:
        user_login_failed.disconnect(dispatch_uid="test-login-failed")
    code = parse_qs(urlsplit(back).query)["code"][0]
    records = [r for r in caplog.records if r.getMessage() == "wecom_sync.login.account_inactive"]
    assert len(records) == 1 and records[0].source_id == source.pk
    everything = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert code not in everything
    assert userid not in everything and user.get_username() not in everything
    assert len(failed) == 1 and code not in repr(failed[0])


def test_a_successful_sign_in_logs_no_code(client, sim, source, caplog):
    caplog.set_level(logging.DEBUG)
    back = pick_member(start(client, source), active_userid(sim))
    assert come_back(client, back).status_code == 302
    code = parse_qs(urlsplit(back).query)["code"][0]
    assert any(r.getMessage() == "wecom_sync.login.authenticated" for r in caplog.records)
    assert code not in " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)


def test_the_backend_ignores_other_credentials_and_model_backend_still_works(source):
    User.objects.create_user("local", password="pw-123-local")
    assert authenticate(None, username="local", password="pw-123-local").get_username() == "local"
    assert authenticate(None, source=source, code=OAuthCode("")) is None
    assert "OAuthCode(********)" == repr(OAuthCode("secret-code"))


# -- buttons ------------------------------------------------------------------------------------------------------


def test_the_admin_login_page_has_a_button_per_source_with_sign_in_on(client, sim, source):
    make_source(slug="other", name="Other Co", login_enabled=False)
    page = client.get("/admin/login/?next=/admin/")
    body = page.content.decode()
    assert 'id="wecom-login-acme"' in body and "Log in with WeCom" in body
    assert 'href="/wecom/login/acme/?next=%2Fadmin%2F"' in body
    assert "wecom-login-other" not in body
    source.login_enabled = False
    source.save()
    assert "wecom-login-acme" not in client.get("/admin/login/").content.decode()


def test_the_template_tag_renders_buttons_for_a_sites_own_login_page(rf, source):
    from django.template import Context, Template

    second = make_source(slug="beta", name="Beta", login_enabled=True)
    html = Template("{% load wecom_sync_login %}{% wecom_login_buttons next='/after/' %}").render(
        Context({"request": rf.get("/")}))
    assert 'href="/wecom/login/acme/?next=%2Fafter%2F"' in html
    assert f'href="/wecom/login/{second.slug}/?next=%2Fafter%2F"' in html
    assert "(Beta)" in html


def test_listed_after_the_admin_the_app_gives_the_admin_site_its_login_template(monkeypatch):
    from django.conf import settings as django_settings
    from django.contrib import admin

    from wecom_sync.apps import ADMIN_LOGIN_TEMPLATE, WeComSyncConfig
    from wecom_sync.checks import check_login_button

    apps = list(django_settings.INSTALLED_APPS)
    assert apps.index("wecom_sync") > apps.index("django.contrib.admin")  # the usual order, as in the example
    assert admin.site.login_template == ADMIN_LOGIN_TEMPLATE
    assert check_login_button() == []
    try:
        # Listed first, Django finds wecom_sync's admin/login.html itself: the admin site is left alone.
        admin.site.login_template = None
        monkeypatch.setattr(django_settings, "INSTALLED_APPS",
                            ["wecom_sync", *[a for a in apps if a != "wecom_sync"]])
        WeComSyncConfig.add_admin_login_button()
        assert admin.site.login_template is None
        assert check_login_button() == []
        # A project's own login template is kept, and the check says how to add the buttons to it.
        monkeypatch.setattr(django_settings, "INSTALLED_APPS", apps)
        admin.site.login_template = "mysite/login.html"
        WeComSyncConfig.add_admin_login_button()
        assert admin.site.login_template == "mysite/login.html"
        assert [w.id for w in check_login_button()] == ["wecom_sync.W010"]
    finally:
        admin.site.login_template = ADMIN_LOGIN_TEMPLATE
    monkeypatch.setattr(django_settings, "AUTHENTICATION_BACKENDS", ["django.contrib.auth.backends.ModelBackend"])
    assert check_login_button() == []


def test_the_admin_login_override_adds_the_buttons_to_djangos_page(rf, source):
    from pathlib import Path

    from django.contrib.auth.forms import AuthenticationForm
    from django.template import engines

    import wecom_sync

    text = (Path(wecom_sync.__file__).parent / "templates" / "admin" / "login.html").read_text()
    request = rf.get("/admin/login/")
    html = engines["django"].from_string(text).render(
        {"form": AuthenticationForm(), "next": "/admin/", "app_path": "/admin/login/"}, request)
    assert 'id="login-form"' in html and html.count('id="wecom-login-acme"') == 1


def test_with_login_create_users_a_source_never_synced_gets_the_members_departments(client, sim, settings):
    settings.WECOM_SYNC = {**settings.WECOM_SYNC, "LOGIN_CREATE_USERS": True}
    source = make_source(slug="fresh", api_base_url=sim.base_url, corp_id=sim.corp_id, agent_id=sim.agent_id,
                         secret=sim.app_secret, contact_sync_secret="", login_enabled=True)
    userid = active_userid(sim)
    dept = sim.org.users[userid]["department"][0]
    assert qr_login(client, source, userid).status_code == 302
    ext = ExternalUser.objects.get(source=source, userid_key=userid.lower())
    assert logged_in_as(client) == ext.user
    assert dept in set(ext.memberships.values_list("department__department_id", flat=True))
    assert sim.calls["/cgi-bin/department/get"] >= 1


def test_with_login_create_users_unreadable_departments_leave_a_root_member_in_scope(client, sim, settings):
    settings.WECOM_SYNC = {**settings.WECOM_SYNC, "LOGIN_CREATE_USERS": True}
    source = make_source(slug="fresh", api_base_url=sim.base_url, corp_id=sim.corp_id, agent_id=sim.agent_id,
                         secret=sim.app_secret, contact_sync_secret="", login_enabled=True)
    sim.add_user(dict(NEWCOMER), deliver=False)  # a member of department 1, the source's root
    sim.faults.fail_next(48002, count=10, path="department/get")
    assert qr_login(client, source, "li.newcomer").status_code == 302
    assert ExternalUser.objects.get(source=source, userid_key="li.newcomer").user == logged_in_as(client)


def test_a_source_without_agent_id_still_redirects_without_one(client, sim, source):
    SyncSource.objects.filter(pk=source.pk).update(agent_id=None)
    source.refresh_from_db()
    assert "agentid" not in parse_qs(urlsplit(start(client, source)).query)


# -- the simulator's side ----------------------------------------------------------------------------------------


def test_simulator_codes_are_valid_once_and_for_a_limited_time(sim):
    from wecom_sync.client import WeComClient
    from wecom_sync.exceptions import WeComAPIError

    userid = active_userid(sim)
    with WeComClient(sim.corp_id, sim.app_secret, base_url=sim.base_url) as api:
        code = sim.login.issue_code(userid)
        assert api.call("GET", "auth/getuserinfo", params={"code": code})["userid"] == userid
        with pytest.raises(WeComAPIError) as used:
            api.call("GET", "auth/getuserinfo", params={"code": code})
        assert used.value.errcode == 40029
        sim.login.code_ttl = -1  # issued already expired
        with pytest.raises(WeComAPIError) as expired:
            api.call("GET", "auth/getuserinfo", params={"code": sim.login.issue_code(userid)})
        assert expired.value.errcode == 40029
    with WeComClient(sim.corp_id, sim.contact_sync_secret, base_url=sim.base_url) as other, \
            pytest.raises(WeComAPIError) as refused:
        other.call("GET", "auth/getuserinfo", params={"code": sim.login.issue_code(userid)})
    assert refused.value.errcode == 48002  # the contact-sync secret is not the app's


@pytest.mark.parametrize(("change", "message"), [
    ({"appid": "wwother"}, "appid"), ({"agentid": "1"}, "agentid"), ({"response_type": "token"}, "response_type"),
    ({"scope": "snsapi_userinfo"}, "scope"), ({"redirect_uri": "/relative/"}, "redirect_uri"),
])
def test_the_simulators_authorize_page_checks_its_parameters(sim, change, message):
    params = {"appid": sim.corp_id, "redirect_uri": "http://testserver/cb/", "response_type": "code",
              "scope": "snsapi_base", "state": "s" * 20, "agentid": str(sim.agent_id), **change}
    page = requests.get(sim.base_url + AUTHORIZE_PATH, params=params, allow_redirects=False, timeout=10)
    assert page.status_code == 400 and message in page.text


def test_the_simulators_web_login_needs_login_type_corpapp_and_shows_members(sim):
    params = {"appid": sim.corp_id, "agentid": str(sim.agent_id), "redirect_uri": "http://testserver/cb/",
              "state": "s" * 20}
    assert requests.get(sim.base_url + WEB_LOGIN_PATH, params=params, timeout=10).status_code == 400
    page = requests.get(sim.base_url + WEB_LOGIN_PATH, params={**params, "login_type": "CorpApp"}, timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert f"data-userid='{sorted(sim.org.users)[0]}'" in page.text
    unknown = requests.post(sim.base_url + CONFIRM_PATH, data={**params, "typed_userid": "nobody"},
                            allow_redirects=False, timeout=10)
    assert unknown.status_code == 200 and "No such member" in unknown.text
