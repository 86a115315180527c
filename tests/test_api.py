"""The REST API (wecom_sync.api) against the simulator: every endpoint with allowed and refused users, sync and
dry run (202 with the run id), approve and reject (409 when not held, status "rejected"), paged lists and
changes, events with reprocess, token and session authentication, errors in DRF's shape, the OpenAPI schema."""

from __future__ import annotations

import warnings

import pytest
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import AES_KEY, APP_SECRET, CONTACT_SECRET, TOKEN, make_source, make_user
from wecom_sync.callbacks import parse_event, store_event
from wecom_sync.models import CallbackEvent, ExternalUser, SyncRun
from wecom_sync.services import run_full_sync
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = pytest.mark.django_db

VIEW_ALL = ("view_syncsource", "view_syncrun", "view_callbackevent")
OPERATOR = (*VIEW_ALL, "run_sync")


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=30, departments=5, seed=3)) as simulator:
        yield simulator


@pytest.fixture
def source(sim):
    return make_source(corp_id=sim.corp_id, secret=sim.app_secret, contact_sync_secret="",
                       api_base_url=sim.base_url, removal_threshold_count=3, removal_threshold_percent=10)


def client_for(user=None) -> APIClient:  # noqa: ANN001
    """An API client signed in with a session (CSRF not enforced, as Django's test client does)."""
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


def url(name: str, **kwargs) -> str:  # noqa: ANN003
    return reverse(f"wecom_sync:{name}", kwargs=kwargs)


def endpoints(source, run, event) -> list[tuple[str, str]]:  # noqa: ANN001
    """(method, url) of every endpoint of the API."""
    return [
        ("get", url("api-source-list")),
        ("get", url("api-source-detail", slug=source.slug)),
        ("post", url("api-source-sync", slug=source.slug)),
        ("get", url("api-run-list")),
        ("get", url("api-run-detail", pk=run.pk)),
        ("get", url("api-run-changes", pk=run.pk)),
        ("post", url("api-run-approve", pk=run.pk)),
        ("post", url("api-run-reject", pk=run.pk)),
        ("get", url("api-event-list")),
        ("get", url("api-event-detail", pk=event.pk)),
        ("post", url("api-event-reprocess", pk=event.pk)),
        ("get", url("api-health")),
        ("get", url("api-schema")),
        ("get", url("api-root")),
    ]


def make_event(source, sim) -> CallbackEvent:  # noqa: ANN001
    userid = sorted(sim.org.users)[0]
    return store_event(source, parse_event(sim.update_user(userid, name="Renamed", deliver=False)))[0]


def make_held_run(source, sim) -> SyncRun:  # noqa: ANN001
    assert run_full_sync(source).status == SyncRun.Status.SUCCEEDED
    for userid in sorted(sim.org.users)[:10]:
        sim.delete_user(userid, deliver=False)
    held = run_full_sync(source)
    assert held.status == SyncRun.Status.HELD
    return held


def test_contract_paths():
    assert url("api-source-list") == "/wecom/api/sources/"
    assert url("api-source-sync", slug="acme") == "/wecom/api/sources/acme/sync/"
    assert url("api-run-changes", pk=7) == "/wecom/api/runs/7/changes/"
    assert url("api-run-approve", pk=7) == "/wecom/api/runs/7/approve/"
    assert url("api-run-reject", pk=7) == "/wecom/api/runs/7/reject/"
    assert url("api-event-reprocess", pk=7) == "/wecom/api/events/7/reprocess/"


def test_anonymous_and_users_without_permission_are_refused_everywhere(source, sim):
    held = SyncRun.objects.create(source=source, status=SyncRun.Status.HELD)
    event = make_event(source, sim)
    nobody = make_user("nobody")
    staff_without_perms = make_user("staff", is_staff=True)
    for method, path in endpoints(source, held, event):
        response = getattr(client_for(), method)(path, format="json")
        assert response.status_code in (401, 403), (method, path, response.status_code)
        assert set(response.json()) == {"detail"}, path  # DRF's error shape, nothing else
        if path.endswith(("/schema/", "/api/")):
            continue  # any signed-in user may read the schema and the root
        for user in (nobody, staff_without_perms):
            response = getattr(client_for(user), method)(path, format="json")
            assert response.status_code == 403, (user, method, path, response.status_code)
    held.refresh_from_db()
    assert held.status == SyncRun.Status.HELD
    assert SyncRun.objects.count() == 1
    assert CallbackEvent.objects.get(pk=event.pk).attempts == 0


def test_view_only_user_reads_everything_but_cannot_act(source, sim):
    held = make_held_run(source, sim)
    event = make_event(source, sim)
    viewer = client_for(make_user("viewer", *VIEW_ALL))
    runs_before = SyncRun.objects.count()
    for method, path in endpoints(source, held, event):
        response = getattr(viewer, method)(path, format="json")
        if method == "get":
            assert response.status_code in (200, 503), (path, response.status_code)  # 503: the held run
        else:
            assert response.status_code == 403, (path, response.status_code)
    held.refresh_from_db()
    assert held.status == SyncRun.Status.HELD
    assert SyncRun.objects.count() == runs_before
    assert ExternalUser.objects.filter(source=source, is_removed=True).count() == 0
    # Each permission only opens its own part.
    runs_only = client_for(make_user("runs-only", "view_syncrun"))
    assert runs_only.get(url("api-run-list")).status_code == 200
    assert runs_only.get(url("api-source-list")).status_code == 403
    assert runs_only.get(url("api-event-list")).status_code == 403
    # run_sync alone is what the admin asks to act (its buttons need nothing else).
    actor = client_for(make_user("actor", "run_sync"))
    assert actor.get(url("api-run-list")).status_code == 403
    assert actor.post(url("api-run-reject", pk=held.pk)).status_code == 200


def test_sync_answers_202_with_the_new_run(source, sim):
    operator_user = make_user("operator", *OPERATOR)
    operator = client_for(operator_user)
    response = operator.post(url("api-source-sync", slug=source.slug), {"dry_run": True}, format="json")
    assert response.status_code == 202
    dry = SyncRun.objects.get(pk=response.json()["id"])
    assert dry.kind == SyncRun.Kind.DRY_RUN and dry.trigger == SyncRun.Trigger.API
    assert dry.requested_by == operator_user
    assert response["Location"].endswith(url("api-run-detail", pk=dry.pk))
    assert ExternalUser.objects.count() == 0  # a dry run applies nothing

    response = operator.post(url("api-source-sync", slug=source.slug), {}, format="json")
    assert response.status_code == 202
    body = response.json()
    run = SyncRun.objects.get(pk=body["id"])
    assert run.kind == SyncRun.Kind.FULL
    # Celery is eager in the tests: the run has already finished.
    assert body["status"] == run.status == SyncRun.Status.SUCCEEDED
    assert body["counters"]["users_created"] == len(sim.org.users)
    assert ExternalUser.objects.filter(source=source).count() == len(sim.org.users)
    detail = operator.get(url("api-run-detail", pk=run.pk)).json()
    assert {"id", "status", "counters"} <= set(detail) and detail["id"] == run.pk


def test_sync_refuses_bad_input_unknown_and_disabled_sources(source):
    operator = client_for(make_user("operator", *OPERATOR))
    response = operator.post(url("api-source-sync", slug=source.slug), {"dry_run": "perhaps"}, format="json")
    assert response.status_code == 400 and "dry_run" in response.json()
    assert operator.post(url("api-source-sync", slug="no-such-source"), {}, format="json").status_code == 404
    source.enabled = False
    source.save()
    response = operator.post(url("api-source-sync", slug=source.slug), {}, format="json")
    assert response.status_code == 409 and "disabled" in response.json()["detail"]
    assert SyncRun.objects.count() == 0


def test_approve_and_reject_held_runs_and_409_when_not_held(source, sim):
    operator = client_for(make_user("operator", *OPERATOR))
    held = make_held_run(source, sim)
    shown = operator.get(url("api-run-detail", pk=held.pk)).json()
    assert shown["status"] == "held" and shown["counters"]["pending_removals"] == 10

    response = operator.post(url("api-run-reject", pk=held.pk))
    assert response.status_code == 200 and response.json()["status"] == "rejected"
    assert response.json()["decided_by"] == "operator"
    held.refresh_from_db()
    assert held.status == SyncRun.Status.REJECTED
    for name in ("api-run-reject", "api-run-approve"):
        response = operator.post(url(name, pk=held.pk))
        assert response.status_code == 409, name
        assert set(response.json()) == {"detail"} and response.json()["detail"]
    assert ExternalUser.objects.filter(source=source, is_removed=True).count() == 0

    again = run_full_sync(source)
    assert again.status == SyncRun.Status.HELD
    response = operator.post(url("api-run-approve", pk=again.pk))
    assert response.status_code == 200 and response.json()["status"] == "succeeded"
    assert ExternalUser.objects.filter(source=source, is_removed=True).count() == 10
    assert operator.post(url("api-run-approve", pk=again.pk)).status_code == 409
    assert operator.post(url("api-run-approve", pk=999999)).status_code == 404


def test_lists_use_the_paginated_envelope(source, sim, settings):
    assert "DEFAULT_PAGINATION_CLASS" not in getattr(settings, "REST_FRAMEWORK", {})
    operator = client_for(make_user("operator", *OPERATOR))
    run = run_full_sync(source)
    run_full_sync(source, dry_run=True)
    make_source(name="Other", contact_sync_secret="")
    for path in (url("api-source-list"), url("api-run-list"), url("api-event-list"),
                 url("api-run-changes", pk=run.pk)):
        body = operator.get(path).json()
        assert {"count", "next", "previous", "results"} <= set(body), path

    page = operator.get(url("api-run-list"), {"page_size": 1}).json()
    assert page["count"] == 2 and len(page["results"]) == 1 and page["next"]
    second = operator.get(page["next"]).json()
    assert second["next"] is None and second["results"][0]["id"] != page["results"][0]["id"]
    assert operator.get(url("api-run-list"), {"kind": "dry_run"}).json()["count"] == 1
    assert operator.get(url("api-run-list"), {"source": "no-such"}).json()["count"] == 0
    bad = operator.get(url("api-run-list"), {"status": "bogus"})
    assert bad.status_code == 400 and "status" in bad.json()

    changes = operator.get(url("api-run-changes", pk=run.pk), {"page_size": 10}).json()
    total = run.changes.count()
    assert total > 10 and changes["count"] == total and len(changes["results"]) == 10 and changes["next"]
    assert {"object_type", "external_id", "action", "fields", "applied"} <= set(changes["results"][0])
    created_users = operator.get(url("api-run-changes", pk=run.pk),
                                 {"action": "created", "object_type": "user", "page_size": 500}).json()
    assert created_users["count"] == len(sim.org.users)
    assert operator.get(url("api-run-changes", pk=run.pk), {"action": "exploded"}).status_code == 400


def test_sources_show_status_and_health_and_never_a_secret():
    with WeComSimulator(generate_organisation(users=20, departments=4, seed=5), app_secret=APP_SECRET,
                        contact_sync_secret=CONTACT_SECRET) as sim:
        source = make_source(corp_id=sim.corp_id, api_base_url=sim.base_url)  # all four secrets set
        assert run_full_sync(source).status == SyncRun.Status.SUCCEEDED
    viewer = client_for(make_user("viewer", "view_syncsource"))
    listed = viewer.get(url("api-source-list"))
    detail = viewer.get(url("api-source-detail", slug=source.slug))
    for response in (listed, detail):
        text = response.content.decode()
        for secret in (APP_SECRET, CONTACT_SECRET, TOKEN, AES_KEY):
            assert secret not in text
    body = detail.json()
    assert body["secrets_set"] == {"secret": True, "contact_sync_secret": True, "token": True,
                                   "encoding_aes_key": True}
    assert not {"secret", "contact_sync_secret", "token", "encoding_aes_key"} & set(body)
    assert body["status"] == "ok"
    health = body["health"]
    assert health["members"] == len(sim.org.users) and health["departments"] == len(sim.org.departments)
    assert health["last_success_at"] and health["last_failure_at"] is None
    assert health["held_runs"] == 0 and health["pending_events"] == 0
    assert body["last_run"]["status"] == "succeeded"
    assert body["callback_url"].endswith(f"/wecom/callback/{source.slug}/")
    assert viewer.get(url("api-source-detail", slug="missing")).status_code == 404


def test_events_list_detail_and_reprocess(source, sim, django_capture_on_commit_callbacks):
    assert run_full_sync(source).status == SyncRun.Status.SUCCEEDED
    event = make_event(source, sim)
    CallbackEvent.objects.filter(pk=event.pk).update(status=CallbackEvent.Status.FAILED, attempts=5,
                                                     last_error="gave up")
    operator = client_for(make_user("operator", *OPERATOR))
    listed = operator.get(url("api-event-list"), {"status": "failed"}).json()
    assert [e["id"] for e in listed["results"]] == [event.pk]
    assert listed["results"][0]["source"] == source.slug
    detail = operator.get(url("api-event-detail", pk=event.pk)).json()
    assert detail["change_type"] == "update_user" and detail["payload"]["UserID"].lower() == event.object_id

    with django_capture_on_commit_callbacks(execute=True):
        response = operator.post(url("api-event-reprocess", pk=event.pk))
    assert response.status_code == 202
    assert response.json()["id"] == event.pk and response.json()["attempts"] == 0
    event.refresh_from_db()
    assert event.status == CallbackEvent.Status.APPLIED  # eager Celery ran it after the commit
    assert ExternalUser.objects.get(source=source, userid_key=event.object_id).name == "Renamed"
    assert operator.post(url("api-event-reprocess", pk=999999)).status_code == 404


def test_token_and_session_authentication(source):
    operator = make_user("operator", *OPERATOR)
    token = Token.objects.create(user=operator)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get(url("api-source-list")).status_code == 200
    assert client.post(url("api-source-sync", slug=source.slug), {"dry_run": True}, format="json").status_code == 202
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    bad = client.get(url("api-source-list"))  # 403 here (sessions come first in these settings), else 401
    assert bad.status_code in (401, 403) and "token" in bad.json()["detail"].lower()
    inactive = make_user("gone", *OPERATOR, is_active=False)
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=inactive).key}")
    assert client.get(url("api-source-list")).status_code in (401, 403)

    # A session needs the CSRF token for unsafe methods, as DRF's SessionAuthentication enforces.
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(operator)
    assert session.get(url("api-run-list")).status_code == 200
    refused = session.post(url("api-source-sync", slug=source.slug), {}, format="json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert SyncRun.objects.count() == 1


def test_errors_keep_drf_shape(source):
    operator = client_for(make_user("operator", *OPERATOR))
    missing = operator.get(url("api-run-detail", pk=424242))
    assert missing.status_code == 404 and set(missing.json()) == {"detail"}
    response = operator.put(url("api-source-detail", slug=source.slug), {"name": "x"}, format="json")
    assert response.status_code == 405 and set(response.json()) == {"detail"}
    assert operator.delete(url("api-source-detail", slug=source.slug)).status_code == 405
    assert operator.get(url("api-source-sync", slug=source.slug)).status_code == 405
    source.refresh_from_db()
    assert source.name != "x"


def test_openapi_schema_without_optional_packages(source):
    operator = client_for(make_user("viewer", "view_syncsource"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. duplicate operation ids
        response = operator.get(url("api-schema"))
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path, method in [
        ("/wecom/api/sources/", "get"), ("/wecom/api/sources/{slug}/", "get"),
        ("/wecom/api/sources/{slug}/sync/", "post"), ("/wecom/api/runs/", "get"), ("/wecom/api/runs/{id}/", "get"),
        ("/wecom/api/runs/{id}/changes/", "get"), ("/wecom/api/runs/{id}/approve/", "post"),
        ("/wecom/api/runs/{id}/reject/", "post"), ("/wecom/api/events/", "get"),
        ("/wecom/api/events/{id}/", "get"), ("/wecom/api/events/{id}/reprocess/", "post"),
        ("/wecom/api/health/", "get"),
    ]:
        assert method in paths.get(path, {}), path
    sync = paths["/wecom/api/sources/{slug}/sync/"]["post"]
    assert sync["parameters"][0]["name"] == "slug"
    operation_ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))
    source_fields = set(schema["components"]["schemas"]["Source"]["properties"])
    assert "secrets_set" in source_fields
    assert not {"secret", "contact_sync_secret", "token", "encoding_aes_key"} & source_fields
