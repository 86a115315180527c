"""The "delete" removal policy deletes only accounts the source alone owns; a shared account is deactivated.

Real simulators over HTTP.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from tests.factories import make_source
from wecom_sync.models import ExternalUser
from wecom_sync.services import run_full_sync
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()


def _source(sim, **fields):
    return make_source(corp_id=sim.corp_id, secret=sim.app_secret, contact_sync_secret="",
                       api_base_url=sim.base_url, agent_id=sim.agent_id, **fields)


def test_delete_policy_never_deletes_an_account_another_source_has_linked():
    """Source A created the account; source B linked it (same email). A's "delete" policy must not delete an
    account that B maps (B's mapping would be silently destroyed): it deactivates it instead."""
    with WeComSimulator(generate_organisation(users=3, departments=1, seed=21)) as sim_a, \
         WeComSimulator(generate_organisation(users=3, departments=1, seed=22)) as sim_b:
        sim_a.add_user({"userid": "shared.a", "name": "Shared", "department": [1],
                        "email": "shared@corp.example"}, deliver=False)
        sim_b.add_user({"userid": "shared.b", "name": "Shared", "department": [1],
                        "email": "shared@corp.example"}, deliver=False)
        a = _source(sim_a, removal_policy="delete", removal_threshold_count=100, removal_threshold_percent=100)
        b = _source(sim_b)
        run_full_sync(a)
        run_full_sync(b)
        ext_a = ExternalUser.objects.get(source=a, userid_key="shared.a")
        ext_b = ExternalUser.objects.get(source=b, userid_key="shared.b")
        assert ext_a.user_id == ext_b.user_id
        assert ext_b.account_origin == ExternalUser.AccountOrigin.LINKED
        account = ext_a.user_id
        sim_b.set_user_status("shared.b", 2, deliver=False)  # disabled in B: B no longer keeps it active
        run_full_sync(b)
        sim_a.delete_user("shared.a", deliver=False)
        run_full_sync(a)
        assert User.objects.filter(pk=account).exists(), "an account source B linked was deleted by source A"
        assert not User.objects.get(pk=account).is_active
        assert ExternalUser.objects.filter(source=b, user_id=account).exists()
