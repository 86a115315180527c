"""A source whose secrets cannot be decrypted fails alone ("a bad key fails one source, not the site"):
the REST API still lists and shows it, and Sign in with WeCom answers with an error page, never a 500."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.test import override_settings
from django.urls import reverse
from rest_framework.test import APIClient

from tests.factories import make_source, make_user
from wecom_sync.login_views import SESSION_KEY
from wecom_sync.models import SECRETS_UNREADABLE_MESSAGE

pytestmark = pytest.mark.django_db


def wecom_settings(**values):
    return override_settings(WECOM_SYNC={**django_settings.WECOM_SYNC, **values})


@pytest.fixture
def lost():
    """A source written with a key the site no longer has."""
    with wecom_settings(ENCRYPTION_KEYS=["a-key-that-was-lost-0123456789abcdef"]):
        return make_source(slug="lost-keys", login_enabled=True, contact_sync_secret="")


def api_client(username: str) -> APIClient:
    client = APIClient()
    client.force_login(make_user(username, "view_syncsource"))
    return client


def test_api_source_list_survives_one_unreadable_source(lost):
    good = make_source(slug="good")
    response = api_client("viewer").get(reverse("wecom_sync:api-source-list"))
    assert response.status_code == 200, response.status_code
    rows = {row["slug"]: row for row in response.json()["results"]}
    assert {good.slug, lost.slug} <= set(rows)
    assert rows[good.slug]["secrets_readable"] is True
    assert rows[lost.slug]["secrets_readable"] is False


def test_api_source_detail_of_unreadable_source_says_which_secrets_are_set_without_decrypting(lost):
    response = api_client("viewer2").get(reverse("wecom_sync:api-source-detail", kwargs={"slug": lost.slug}))
    assert response.status_code == 200, response.status_code
    body = response.json()
    assert body["secrets_set"] == {"secret": True, "contact_sync_secret": False, "token": True,
                                   "encoding_aes_key": True}
    assert body["secrets_readable"] is False


def test_login_callback_of_unreadable_source_is_an_error_page_not_500(client, lost):
    client.raise_request_exception = False
    start = client.get(reverse("wecom_sync:login", kwargs={"slug": lost.slug}))
    assert start.status_code == 302
    state = next(iter(client.session[SESSION_KEY]))
    response = client.get(reverse("wecom_sync:login_callback", kwargs={"slug": lost.slug}),
                          {"code": "abc", "state": state})
    assert response.status_code == 503, response.status_code
    page = response.content.decode()
    assert 'data-reason="secrets_unreadable"' in page
    assert str(SECRETS_UNREADABLE_MESSAGE) in page
    assert client.session.get("_auth_user_id") is None
