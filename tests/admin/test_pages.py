"""Admin pages: render for a superuser, secrets masked, read-only lists."""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from tests.factories import AES_KEY, APP_SECRET, CONTACT_SECRET, TOKEN, make_source
from wecom_sync.models import SyncSource

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser_client(client):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


def test_source_pages_render_and_mask_secrets(superuser_client):
    source = make_source()
    for url in (
        reverse("admin:wecom_sync_syncsource_changelist"),
        reverse("admin:wecom_sync_syncsource_add"),
        reverse("admin:wecom_sync_syncsource_change", args=[source.pk]),
    ):
        response = superuser_client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        for value in (APP_SECRET, CONTACT_SECRET, TOKEN, AES_KEY):
            assert value not in html, (url, "secret leaked")
    html = superuser_client.get(reverse("admin:wecom_sync_syncsource_change", args=[source.pk])).content.decode()
    assert f"http://testserver/wecom/callback/{source.slug}/" in html
    assert "data-wecom-generate" in html
    assert "wecom_sync/admin.js" in html


def test_change_with_blank_secrets_keeps_them(superuser_client):
    source = make_source()
    url = reverse("admin:wecom_sync_syncsource_change", args=[source.pk])
    data = {
        "name": "Acme renamed", "slug": source.slug, "corp_id": source.corp_id, "agent_id": "1000002",
        "secret": "", "contact_sync_secret": "", "token": "", "encoding_aes_key": "",
        "api_base_url": "https://qyapi.weixin.qq.com", "enabled": "on", "root_department_id": "1",
        "fetch_strategy": "auto", "sync_interval_minutes": "0", "removal_policy": "deactivate",
        "removal_threshold_count": "50", "removal_threshold_percent": "20",
    }
    response = superuser_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    fresh = SyncSource.objects.get(pk=source.pk)
    assert fresh.name == "Acme renamed"
    assert (fresh.secret, fresh.token, fresh.encoding_aes_key) == (APP_SECRET, TOKEN, AES_KEY)


def test_read_only_admin_lists_render(superuser_client):
    make_source()
    for model in ("externaldepartment", "externaluser", "externalmembership", "syncrun", "syncrunchange",
                  "callbackevent"):
        response = superuser_client.get(reverse(f"admin:wecom_sync_{model}_changelist"))
        assert response.status_code == 200, model
        assert reverse(f"admin:wecom_sync_{model}_add") not in response.content.decode()
