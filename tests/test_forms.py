"""The sync source form: validation messages and keep-if-blank secrets."""

import pytest

from tests.factories import AES_KEY, APP_SECRET, CONTACT_SECRET, TOKEN, make_source
from wecom_sync.forms import SyncSourceForm, mask
from wecom_sync.models import SyncSource

pytestmark = pytest.mark.django_db


def form_data(**overrides):
    data = {
        "name": "Acme",
        "slug": "acme",
        "corp_id": "ww1a2b3c4d5e6f7a8b",
        "agent_id": "1000002",
        "secret": APP_SECRET,
        "contact_sync_secret": "",
        "token": TOKEN,
        "encoding_aes_key": AES_KEY,
        "api_base_url": "https://qyapi.weixin.qq.com",
        "enabled": "on",
        "root_department_id": "1",
        "fetch_strategy": "auto",
        "sync_interval_minutes": "60",
        "removal_policy": "deactivate",
        "removal_threshold_count": "50",
        "removal_threshold_percent": "20",
    }
    data.update(overrides)
    return data


def test_valid_form_creates_source():
    form = SyncSourceForm(data=form_data())
    assert form.is_valid(), form.errors
    source = form.save()
    assert SyncSource.objects.get(pk=source.pk).secret == APP_SECRET


@pytest.mark.parametrize(
    ("field", "value", "code_text"),
    [
        ("corp_id", "12345", "Corp ID starts with"),
        ("corp_id", "ww12 34", "Corp ID starts with"),
        ("agent_id", "abc", "AgentId is a whole number"),
        ("agent_id", "-5", "positive whole number"),
        ("token", "a" * 33, "1 to 32 letters and digits"),
        ("token", "bad token!", "1 to 32 letters and digits"),
        ("encoding_aes_key", "short", "exactly 43 characters"),
        ("encoding_aes_key", "!" * 43, "decode to a 32-byte key"),
    ],
)
def test_each_validation_error(field, value, code_text):
    form = SyncSourceForm(data=form_data(**{field: value}))
    assert not form.is_valid()
    assert code_text in " ".join(form.errors[field])


def test_secret_required_and_callback_pair():
    form = SyncSourceForm(data=form_data(secret=""))
    assert not form.is_valid()
    assert "Secret of the self-built app" in " ".join(form.errors["secret"])
    form = SyncSourceForm(data=form_data(encoding_aes_key=""))
    assert not form.is_valid()
    assert "go together" in " ".join(form.errors["encoding_aes_key"])


def test_blank_secret_keeps_stored_value_and_new_value_replaces():
    source = make_source()
    data = form_data(name="Renamed", slug=source.slug, corp_id=source.corp_id, secret="", token="",
                     encoding_aes_key="", contact_sync_secret="")
    form = SyncSourceForm(data=data, instance=source)
    assert form.is_valid(), form.errors
    form.save()
    fresh = SyncSource.objects.get(pk=source.pk)
    assert fresh.name == "Renamed"
    assert (fresh.secret, fresh.contact_sync_secret, fresh.token, fresh.encoding_aes_key) == (
        APP_SECRET, CONTACT_SECRET, TOKEN, AES_KEY
    )
    form = SyncSourceForm(data={**data, "secret": "brand-new-secret-value-0001"}, instance=fresh)
    assert form.is_valid(), form.errors
    form.save()
    assert SyncSource.objects.get(pk=source.pk).secret == "brand-new-secret-value-0001"


def test_clear_optional_secrets():
    source = make_source()
    data = form_data(slug=source.slug, corp_id=source.corp_id, secret="", token="", encoding_aes_key="",
                     clear_contact_sync_secret="on", clear_token="on", clear_encoding_aes_key="on")
    form = SyncSourceForm(data=data, instance=source)
    assert form.is_valid(), form.errors
    form.save()
    fresh = SyncSource.objects.get(pk=source.pk)
    assert (fresh.contact_sync_secret, fresh.token, fresh.encoding_aes_key) == ("", "", "")
    assert fresh.secret == APP_SECRET


def test_form_never_renders_stored_secrets():
    source = make_source()
    html = str(SyncSourceForm(instance=source))
    for value in (APP_SECRET, CONTACT_SECRET, TOKEN, AES_KEY):
        assert value not in html
    assert mask(APP_SECRET) in html


def test_mask():
    assert mask("") == "not set"
    assert mask("0123456789abcdefWXYZ").endswith("WXYZ")
    assert "short" not in mask("short")
