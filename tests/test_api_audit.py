"""The API answers no more than the caller may read, and records what it does in the admin history (LogEntry)
with the acting user, as the admin does. Simulator over HTTP for the events and runs."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType

from tests import test_api
from tests.factories import make_user
from wecom_sync.audit import record_action
from wecom_sync.models import SyncRun

pytestmark = pytest.mark.django_db

# The API tests' fixtures and helpers: the simulator, a source on it, signed-in clients, URLs, events.
sim, source = test_api.sim, test_api.source
client_for, make_event, make_held_run, url = (
    test_api.client_for, test_api.make_event, test_api.make_held_run, test_api.url,
)


def history(user, obj) -> list[str]:  # noqa: ANN001
    """The change messages of ``user``'s entries in the admin History of ``obj``."""
    entries = LogEntry.objects.filter(user=user, content_type=ContentType.objects.get_for_model(obj),
                                      object_id=str(obj.pk))
    return list(entries.order_by("pk").values_list("change_message", flat=True))


def test_run_sync_only_user_cannot_read_decrypted_event_payload_through_reprocess(source, sim):
    event = make_event(source, sim)
    actor = client_for(make_user("actor", "run_sync"))
    assert actor.get(url("api-event-detail", pk=event.pk)).status_code == 403  # may not read events
    response = actor.post(url("api-event-reprocess", pk=event.pk))
    assert response.status_code == 202
    body = response.json()
    assert body["id"] == event.pk
    assert "payload" not in body, "the decrypted event (names, mobiles, emails) leaked"


def test_api_reject_and_reprocess_are_recorded_in_the_admin_history_with_the_acting_user(source, sim):
    held = SyncRun.objects.create(source=source, status=SyncRun.Status.HELD)
    event = make_event(source, sim)
    user = make_user("operator", "view_syncrun", "view_callbackevent", "run_sync")
    client = client_for(user)
    assert client.post(url("api-run-reject", pk=held.pk)).status_code == 200
    assert client.post(url("api-event-reprocess", pk=event.pk)).status_code == 202
    assert history(user, held) == ["Rejected the held removals."], "API reject left no history"
    assert history(user, event) == ["Reprocessed."], "API reprocess left no history"


def test_api_approve_and_sync_are_recorded_and_a_refused_decision_is_not(source, sim):
    held = make_held_run(source, sim)
    user = make_user("approver", "view_syncrun", "view_syncsource", "run_sync")
    client = client_for(user)
    assert client.post(url("api-run-approve", pk=held.pk)).status_code == 200
    assert history(user, held) == ["Approved the held removals."]
    assert client.post(url("api-run-reject", pk=held.pk)).status_code == 409  # no longer held
    assert history(user, held) == ["Approved the held removals."]
    started = client.post(url("api-source-sync", slug=source.slug), {"dry_run": True}, format="json")
    assert started.status_code == 202
    assert history(user, source) == [f"Started a dry run (run #{started.json()['id']})."]


def test_record_action_needs_no_request_and_skips_anonymous_users(source):
    from django.contrib.auth.models import AnonymousUser

    user = make_user("someone")
    record_action(user, source, "Did something.")
    record_action(AnonymousUser(), source, "Nobody did this.")
    record_action(None, source, "Nor this.")
    assert list(LogEntry.objects.values_list("user__username", "change_message")) == [("someone", "Did something.")]
