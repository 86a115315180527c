"""Secrets at rest: authenticated encryption, key ids, rotation."""

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from tests.factories import AES_KEY, APP_SECRET, CONTACT_SECRET, TOKEN, make_source
from wecom_sync.internal import secretbox
from wecom_sync.internal.secretbox import SecretDecryptionError
from wecom_sync.models import SyncSource

SECRET_COLUMNS = ("secret", "contact_sync_secret", "token", "encoding_aes_key")


def raw_row(pk: int) -> dict:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(SECRET_COLUMNS)} FROM wecom_sync_syncsource WHERE id = %s", [pk]  # noqa: S608
        )
        return dict(zip(SECRET_COLUMNS, cursor.fetchone(), strict=True))


def test_round_trip_and_format():
    stored = secretbox.encrypt("hello 世界")
    assert stored.startswith("wse1$")
    assert "hello" not in stored
    assert secretbox.decrypt(stored) == "hello 世界"
    # A random nonce: the same plaintext encrypts differently each time.
    assert secretbox.encrypt("hello 世界") != stored


def test_tampering_is_detected():
    stored = secretbox.encrypt("top secret value")
    prefix, key_id, blob = stored.split("$")
    flipped = blob[:10] + ("A" if blob[10] != "A" else "B") + blob[11:]
    with pytest.raises(SecretDecryptionError):
        secretbox.decrypt(f"{prefix}${key_id}${flipped}")
    with pytest.raises(SecretDecryptionError):
        secretbox.decrypt("wse1$deadbeef$not-base64!!")


@pytest.mark.django_db
def test_raw_sql_shows_no_plaintext():
    source = make_source()
    row = raw_row(source.pk)
    for column, plain in zip(SECRET_COLUMNS, (APP_SECRET, CONTACT_SECRET, TOKEN, AES_KEY), strict=True):
        assert row[column].startswith("wse2$"), column
        assert plain not in row[column]
    fresh = SyncSource.objects.get(pk=source.pk)
    assert (fresh.secret, fresh.contact_sync_secret, fresh.token, fresh.encoding_aes_key) == (
        APP_SECRET, CONTACT_SECRET, TOKEN, AES_KEY,
    )


@pytest.mark.django_db
def test_empty_secret_stays_empty():
    source = make_source(contact_sync_secret="", token="", encoding_aes_key="")
    row = raw_row(source.pk)
    assert row["contact_sync_secret"] == "" and row["token"] == ""


@pytest.mark.django_db
def test_key_rotation_command():
    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": ["old-key"]}):
        source = make_source()
        old_id = secretbox.keys()[0][0]
        assert secretbox.key_id_of(raw_row(source.pk)["secret"]) == old_id
    # The new key first, the old one kept so existing values stay readable.
    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": ["new-key", "old-key"]}):
        new_id = secretbox.keys()[0][0]
        assert SyncSource.objects.get(pk=source.pk).secret == APP_SECRET
        call_command("wecom_sync_rotate_keys", stdout=open("/dev/null", "w"))  # noqa: SIM115
        assert all(secretbox.key_id_of(v) == new_id for v in raw_row(source.pk).values())
    # After rotation the old key can go.
    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": ["new-key"]}):
        assert SyncSource.objects.get(pk=source.pk).token == TOKEN
    # Without the right key, reading fails loudly rather than returning garbage.
    # Loading the row works (lists and pages stay up); reading the secret fails.
    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": ["unrelated"]}), pytest.raises(SecretDecryptionError):
        SyncSource.objects.get(pk=source.pk).secret  # noqa: B018


@pytest.mark.django_db
def test_fallback_key_derived_from_secret_key():
    with override_settings(WECOM_SYNC={}, SECRET_KEY="first-secret-key"):
        source = make_source()
        assert SyncSource.objects.get(pk=source.pk).secret == APP_SECRET
    with override_settings(WECOM_SYNC={}, SECRET_KEY="another-secret-key"), pytest.raises(SecretDecryptionError):
        SyncSource.objects.get(pk=source.pk).secret  # noqa: B018
    # Rotating SECRET_KEY the Django way (the old one in SECRET_KEY_FALLBACKS) keeps the secrets readable.
    with override_settings(WECOM_SYNC={}, SECRET_KEY="another-secret-key",
                           SECRET_KEY_FALLBACKS=["first-secret-key"]):
        assert SyncSource.objects.get(pk=source.pk).secret == APP_SECRET
        call_command("wecom_sync_rotate_keys", stdout=open("/dev/null", "w"))  # noqa: SIM115
    with override_settings(WECOM_SYNC={}, SECRET_KEY="another-secret-key"):
        assert SyncSource.objects.get(pk=source.pk).secret == APP_SECRET


@pytest.mark.django_db
def test_ciphertext_is_bound_to_its_row_and_field():
    first, second = make_source(), make_source(secret="other-secret-value-123456")
    row = raw_row(first.pk)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE wecom_sync_syncsource SET secret = %s, token = %s WHERE id = %s",
                       [row["secret"], row["secret"], second.pk])
    moved = SyncSource.objects.get(pk=second.pk)
    with pytest.raises(SecretDecryptionError):
        moved.secret  # noqa: B018 - another row
    with pytest.raises(SecretDecryptionError):
        moved.token  # noqa: B018 - another field
    assert moved.contact_sync_secret == CONTACT_SECRET
    assert not moved.secrets_readable and SyncSource.objects.get(pk=first.pk).secrets_readable


@pytest.mark.django_db
def test_legacy_unbound_values_still_decrypt_and_rotation_binds_them():
    source = make_source()
    legacy = secretbox.encrypt(APP_SECRET)  # the wse1 format of earlier releases
    assert legacy.startswith("wse1$")
    SyncSource.objects.filter(pk=source.pk).update(secret=legacy)
    assert raw_row(source.pk)["secret"] == legacy
    assert SyncSource.objects.get(pk=source.pk).secret == APP_SECRET
    call_command("wecom_sync_rotate_keys", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert raw_row(source.pk)["secret"].startswith("wse2$")
    assert SyncSource.objects.get(pk=source.pk).secret == APP_SECRET


@pytest.mark.django_db
def test_dumpdata_carries_ciphertext_and_loaddata_restores_working_secrets(tmp_path):
    import io
    import json

    source = make_source()
    out = io.StringIO()
    call_command("dumpdata", "wecom_sync.syncsource", stdout=out)
    text = out.getvalue()
    for plain in (APP_SECRET, CONTACT_SECRET, TOKEN, AES_KEY):
        assert plain not in text
    fields = json.loads(text)[0]["fields"]
    assert fields["secret"].startswith("wse2$")
    SyncSource.objects.all().delete()
    fixture = tmp_path / "sources.json"
    fixture.write_text(text)
    call_command("loaddata", str(fixture), stdout=io.StringIO())
    loaded = SyncSource.objects.get(pk=source.pk)
    assert (loaded.secret, loaded.contact_sync_secret, loaded.token, loaded.encoding_aes_key) == (
        APP_SECRET, CONTACT_SECRET, TOKEN, AES_KEY,
    )
    assert raw_row(source.pk)["secret"] == fields["secret"]  # the ciphertext itself, not re-encrypted
    # A dump loaded on a site with other keys loads; the source then asks for its secrets again.
    SyncSource.objects.all().delete()
    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": ["another-site-0123456789abcdef0123456789"]}):
        call_command("loaddata", str(fixture), stdout=io.StringIO())
        assert not SyncSource.objects.get(pk=source.pk).secrets_readable


@pytest.mark.django_db
def test_rotation_reports_per_source_and_exits_non_zero_on_a_lost_key():
    import io

    from django.core.management.base import CommandError

    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": ["lost-key-0123456789abcdefghijklmnop"]}):
        lost = make_source(slug="lost-one")
    kept = make_source(slug="kept-one")
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="lost-one"):
        call_command("wecom_sync_rotate_keys", stdout=out, stderr=err)
    assert "kept-one" in out.getvalue() and "lost-one" not in out.getvalue()
    assert "lost-one: stored secrets cannot be decrypted" in err.getvalue()
    assert SyncSource.objects.get(pk=kept.pk).secret == APP_SECRET
    assert not SyncSource.objects.get(pk=lost.pk).secrets_readable
