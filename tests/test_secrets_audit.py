"""Secrets audit: after the main scenarios, no Secret, access token, Token or EncodingAESKey appears in logs
(every logger at DEBUG), admin HTML, run messages, change errors, event errors, or any database column.

Scenarios: full syncs (both fetch strategies), a token revoked mid-way, a source with a wrong secret, an
unreachable API, callbacks (URL verification and events, applied eagerly), a failing event, admin pages, and
every endpoint of the REST API (reads, a sync started, a held run rejected and approved, an event reprocessed,
health, schema).
"""

from __future__ import annotations

import logging

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.urls import NoReverseMatch, reverse

from tests.factories import make_source
from wecom_sync import events, services
from wecom_sync.callbacks import parse_event, store_event
from wecom_sync.crypto import WeComCrypto
from wecom_sync.models import CallbackEvent, SyncRun, SyncSource
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = pytest.mark.django_db(transaction=True)

APP_SECRET = "audit-app-secret-7Qm2Xv9Lp4Kd8Rz1"
CONTACT_SECRET = "audit-contact-secret-3Nf6Hb0Tc5Wy2Js8"
WRONG_SECRET = "audit-wrong-secret-9Gh4Pk7Ve1Ua6Mx3"
TOKEN = "AuditTok3nQw8Er5Ty2Ui9Op4As7Df"
AES_KEY = "auditKey0123456789abcdefghijklmnopqrstuvwxy"  # 43 characters


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    """Names of the secrets whose value occurs in ``text``."""
    return [name for name, value in secrets.items() if value and value in text]


def scan_database(secrets: dict[str, str]) -> list[str]:
    """Every value of every column of every table, read with raw SQL: where does a secret occur?"""
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 - our own table names
            columns = [c[0] for c in cursor.description]
            for row in cursor.fetchall():
                for column, value in zip(columns, row, strict=True):
                    if isinstance(value, memoryview | bytes):
                        value = bytes(value).decode("utf-8", "replace")
                    for name in leaks(str(value), secrets):
                        found.append(f"{table}.{column}: {name}")
    return found


def admin_pages(client: Client) -> dict[str, str]:
    """HTML of the changelist, add and change pages of every wecom_sync model in the admin."""
    pages = {}
    for model in admin.site._registry:
        if model._meta.app_label != "wecom_sync":
            continue
        name = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        urls = [reverse(f"{name}_changelist")]
        try:
            urls.append(reverse(f"{name}_add"))
        except NoReverseMatch:
            pass
        urls += [reverse(f"{name}_change", args=[pk]) for pk in model._default_manager.values_list("pk", flat=True)[:5]]
        for url in urls:
            response = client.get(url)
            if response.status_code == 200:
                pages[url] = response.content.decode()
    return pages


def api_responses(client: Client, sim: WeComSimulator, source: SyncSource) -> dict[str, str]:
    """Body of every REST API endpoint (each list, each detail, each action), keyed by method and URL."""
    bodies: dict[str, str] = {}

    def call(method: str, url: str, expected: tuple[int, ...] = (200,), **params: object) -> dict:
        response = getattr(client, method)(url, params, content_type="application/json") if method == "post" \
            else client.get(url, params)
        assert response.status_code in expected, (method, url, response.status_code)
        bodies[f"{method.upper()} {url} {params}"] = response.content.decode()
        return response.json()

    def name(view: str, **kwargs: object) -> str:
        return reverse(f"wecom_sync:{view}", kwargs=kwargs)

    call("get", name("api-root"))
    call("get", name("api-schema"))
    call("get", name("api-health"), expected=(200, 503))
    sources = call("get", name("api-source-list"), page_size=500)["results"]
    assert any(all(s["secrets_set"].values()) for s in sources), "a source with all four secrets is listed"
    for item in sources:
        call("get", name("api-source-detail", slug=item["slug"]))
    # Actions: a dry run and a sync started, a held run rejected and another approved, an event reprocessed.
    call("post", name("api-source-sync", slug=source.slug), expected=(202,), dry_run=True)
    for userid in sorted(sim.org.users)[-12:]:
        sim.delete_user(userid, deliver=False)
    held = call("post", name("api-source-sync", slug=source.slug), expected=(202,))
    assert held["status"] == "held", held
    call("post", name("api-run-reject", pk=held["id"]))
    call("post", name("api-run-reject", pk=held["id"]), expected=(409,))
    held = call("post", name("api-source-sync", slug=source.slug), expected=(202,))
    call("post", name("api-run-approve", pk=held["id"]))
    for run in call("get", name("api-run-list"), page_size=500)["results"]:
        call("get", name("api-run-detail", pk=run["id"]))
        call("get", name("api-run-changes", pk=run["id"]), page_size=500)
    event_ids = [e["id"] for e in call("get", name("api-event-list"), page_size=500)["results"]]
    assert event_ids
    for pk in event_ids:
        call("get", name("api-event-detail", pk=pk))
    call("post", name("api-event-reprocess", pk=event_ids[0]), expected=(202,))
    call("get", name("api-health"), expected=(200, 503))
    return bodies


def test_the_audit_finds_a_planted_secret(caplog):
    """The detectors themselves work: a secret put in a log line, a page and a column is found."""
    secrets = {"app secret": APP_SECRET}
    caplog.set_level(logging.DEBUG)
    logging.getLogger("wecom_sync.audit").debug("oops %s", APP_SECRET)
    assert leaks(caplog.text, secrets) == ["app secret"]
    assert leaks(f"<td>{APP_SECRET}</td>", secrets) == ["app secret"]
    SyncRun.objects.create(source=make_source(), message=f"failed with {APP_SECRET}")
    assert scan_database(secrets) == ["wecom_sync_syncrun.message: app secret"]


def test_no_secret_in_logs_admin_run_messages_or_database(caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    with WeComSimulator(generate_organisation(users=40, departments=6, seed=21), app_secret=APP_SECRET,
                        contact_sync_secret=CONTACT_SECRET) as sim:
        source = make_source(corp_id=sim.corp_id, secret=APP_SECRET, contact_sync_secret=CONTACT_SECRET,
                             token=TOKEN, encoding_aes_key=AES_KEY, api_base_url=sim.base_url)
        # Full syncs: contact-sync strategy, then app strategy with the token revoked during the fetch.
        assert services.run_full_sync(source).status == SyncRun.Status.SUCCEEDED
        SyncSource.objects.filter(pk=source.pk).update(fetch_strategy="app")
        source.refresh_from_db()
        sim.faults.invalidate_tokens()
        sim.update_user(sorted(sim.org.users)[0], name="renamed for the audit", deliver=False)
        assert services.run_full_sync(source).status == SyncRun.Status.SUCCEEDED

        # A wrong secret (40001) and an unreachable API: failed runs with messages.
        wrong = make_source(corp_id=sim.corp_id, secret=WRONG_SECRET, contact_sync_secret="", token=TOKEN,
                            encoding_aes_key=AES_KEY, api_base_url=sim.base_url)
        failed = services.run_full_sync(wrong)
        assert failed.status == SyncRun.Status.FAILED and failed.message
        down = make_source(corp_id=sim.corp_id, secret=APP_SECRET, contact_sync_secret="", token=TOKEN,
                           encoding_aes_key=AES_KEY, api_base_url="http://127.0.0.1:1")
        assert services.run_full_sync(down).status == SyncRun.Status.FAILED

        # Callbacks through the real view: URL verification, then events applied (eager Celery).
        client = Client()
        crypto = WeComCrypto(TOKEN, AES_KEY, sim.corp_id)
        echostr = crypto.encrypt("audit-echo")
        query = {"msg_signature": crypto.sign("1700000000", "7", echostr), "timestamp": "1700000000", "nonce": "7",
                 "echostr": echostr}
        assert client.get(source.get_callback_path(), query).content == b"audit-echo"
        for userid in sorted(sim.org.users)[1:4]:
            body, params = crypto.envelope_xml(sim.update_user(userid, name=f"cb {userid}", deliver=False), "9")
            response = client.post(f"{source.get_callback_path()}?msg_signature={params['msg_signature']}"
                                   f"&timestamp={params['timestamp']}&nonce={params['nonce']}", data=body,
                                   content_type="text/xml")
            assert response.status_code == 200
        assert set(CallbackEvent.objects.filter(source=source).values_list("status", flat=True)) == {"applied"}

        # A failing event: the token is revoked and gettoken refuses the secret, so the retry fails too.
        sim.faults.invalidate_tokens()
        sim.faults.fail_next(40001, count=50, path="gettoken")
        event = store_event(source, parse_event(sim.update_user(sorted(sim.org.users)[5], name="x", deliver=False)))[0]
        assert events.process_event(event.pk) == CallbackEvent.Status.PENDING
        event.refresh_from_db()
        assert event.last_error and event.attempts == 1
        sim.faults.clear()

        # Admin pages, with the source's forms and every run and event listed.
        user_model = get_user_model()
        superuser = user_model.objects.create_superuser("audit-admin", "audit@example.com", "pw")
        admin_client = Client()
        admin_client.force_login(superuser)
        pages = admin_pages(admin_client)
        assert any("syncsource" in url for url in pages) and any("syncrun" in url for url in pages)
        api = api_responses(admin_client, sim, source)
        assert len(api) > 20

        access_tokens = list(sim._tokens)  # every access token the simulator issued
        assert len(access_tokens) >= 3

    secrets = {"app secret": APP_SECRET, "contact-sync secret": CONTACT_SECRET, "wrong secret": WRONG_SECRET,
               "callback Token": TOKEN, "EncodingAESKey": AES_KEY}
    secrets.update({f"access token #{i}": token for i, token in enumerate(access_tokens)})

    # Logs: the formatted messages, and every attribute of every record (the structured "extra" fields).
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # DEBUG really was captured
    assert leaks(caplog.text, secrets) == []
    for record in caplog.records:
        assert leaks(f"{record.getMessage()} {record.__dict__!r} {record.exc_text or ''}", secrets) == [], record.name
    # Admin HTML.
    for url, html in pages.items():
        assert leaks(html, secrets) == [], url
    # Every REST API response.
    for call, body in api.items():
        assert leaks(body, secrets) == [], call
    # Run messages, change errors, event errors: and every other column of every table.
    for run in SyncRun.objects.all():
        assert leaks(run.message, secrets) == [] and leaks(str(run.counters), secrets) == []
    assert scan_database(secrets) == []
    # The secrets are stored, encrypted: the scan would have seen them in plaintext.
    assert SyncSource.objects.get(pk=source.pk).secret == APP_SECRET
