"""Settings object and system checks."""

from django.core import checks
from django.test import override_settings

from wecom_sync.conf import DEFAULTS, app_settings


def test_defaults_and_override():
    with override_settings(WECOM_SYNC={}):
        assert app_settings.BATCH_SIZE == DEFAULTS["BATCH_SIZE"]
        assert app_settings.API_TIMEOUT == (5.0, 30.0)
    with override_settings(WECOM_SYNC={"BATCH_SIZE": 10, "API_TIMEOUT": 3}):
        assert app_settings.BATCH_SIZE == 10
        assert app_settings.API_TIMEOUT == (3.0, 3.0)


def test_every_default_has_a_property():
    for name in DEFAULTS:
        assert hasattr(type(app_settings), name), name


def _ids(**kwargs):
    return {m.id for m in checks.run_checks(include_deployment_checks=False, **kwargs)}


def test_missing_encryption_key_warns_outside_debug():
    with override_settings(DEBUG=False, WECOM_SYNC={}):
        assert "wecom_sync.W001" in _ids()
    with override_settings(DEBUG=False, WECOM_SYNC={"ENCRYPTION_KEYS": ["k"]}):
        assert "wecom_sync.W001" not in _ids()
    with override_settings(DEBUG=True, WECOM_SYNC={}):
        assert "wecom_sync.W001" not in _ids()


def test_short_encryption_keys_are_rejected_outside_debug():
    long_key = "k" * 32
    with override_settings(DEBUG=False, WECOM_SYNC={"ENCRYPTION_KEYS": ["a"]}):
        assert "wecom_sync.E005" in _ids()
    with override_settings(DEBUG=False, WECOM_SYNC={"ENCRYPTION_KEYS": [long_key, "old-short"]}):
        assert "wecom_sync.E005" in _ids()
    with override_settings(DEBUG=False, WECOM_SYNC={"ENCRYPTION_KEYS": [long_key]}):
        assert "wecom_sync.E005" not in _ids()
    with override_settings(DEBUG=True, WECOM_SYNC={"ENCRYPTION_KEYS": ["a"]}):
        assert "wecom_sync.E005" not in _ids()


def test_bad_settings_are_errors():
    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": ["k"], "ADAPTER": "nope.Missing"}):
        assert "wecom_sync.E002" in _ids()
    with override_settings(WECOM_SYNC={"ENCRYPTION_KEYS": ["k"], "LINK_EXISTING_BY": ["phone"]}):
        assert "wecom_sync.E003" in _ids()
