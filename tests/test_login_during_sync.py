"""A member provisioned at sign-in while a full sync runs is not removed by that sync's older snapshot.

The sign-in is interleaved with the real fetch (simulator over HTTP): the sync's snapshot is taken first, then
the member appears in WeCom and signs in (LOGIN_CREATE_USERS provisions the account), then the sync plans.
"""

from __future__ import annotations

import pytest

from tests import test_login
from wecom_sync import services
from wecom_sync.auth import provision_member
from wecom_sync.models import ExternalUser
from wecom_sync.sync import runner

pytestmark = pytest.mark.django_db

# The sign-in tests' fixtures: the simulator, its login URLs, a synced source with sign-in on.
sim, login_settings, source = test_login.sim, test_login.login_settings, test_login.source


def test_a_member_provisioned_at_login_during_a_full_sync_is_not_removed_by_that_sync(
        sim, source, settings, monkeypatch):
    settings.WECOM_SYNC = {**settings.WECOM_SYNC, "LOGIN_CREATE_USERS": True}
    real_fetch = runner.fetch

    def fetch_then_someone_signs_in(src, progress=None):
        snapshot = real_fetch(src, progress)
        sim.add_user({"userid": "newcomer", "name": "New Comer", "department": [1]}, deliver=False)
        provision_member(src, "newcomer")  # the newcomer's first sign-in, while the sync runs
        return snapshot

    monkeypatch.setattr(runner, "fetch", fetch_then_someone_signs_in)
    source.removal_threshold_count = 1000
    source.removal_threshold_percent = 100
    source.save()
    run = services.run_full_sync(source)
    ext = ExternalUser.objects.get(source=source, userid_key="newcomer")
    assert not ext.is_removed and ext.user.is_active, "the account created at sign-in was removed by the sync"
    assert not run.changes.filter(external_id="newcomer").exists()
    services.run_full_sync(source)  # the next snapshot lists the newcomer: still there
    ext.refresh_from_db()
    assert not ext.is_removed
