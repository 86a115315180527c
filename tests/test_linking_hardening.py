"""Review findings on linking: look-alike values never link, new logins never case-collide.

Real simulator over HTTP; each test failed on the code before its fix.
"""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import override_settings

from tests.factories import make_source
from wecom_sync.models import ExternalUser
from wecom_sync.services import run_full_sync
from wecom_sync.simulator import WeComSimulator, generate_organisation

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()

#: U+212A KELVIN SIGN: str.lower() (and PostgreSQL's lower()) maps it to ASCII "k"; it is another address.
KELVIN = "\u212a"


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=4, departments=2, seed=5)) as simulator:
        yield simulator


def _source(sim, **fields):
    return make_source(corp_id=sim.corp_id, secret=sim.app_secret, contact_sync_secret="",
                       api_base_url=sim.base_url, agent_id=sim.agent_id, **fields)


def test_a_look_alike_email_in_wecom_does_not_link_someone_elses_account(sim):
    victim = User.objects.create_user("kate", "kate@corp.example", "pw-kate-123")
    sim.add_user({"userid": "mallory", "name": "Mallory", "department": [1],
                  "email": f"{KELVIN}ate@corp.example"}, deliver=False)
    source = _source(sim)
    run_full_sync(source)
    ext = ExternalUser.objects.get(source=source, userid_key="mallory")
    assert ext.user_id != victim.pk, "a look-alike email linked (and hands sign-in to) another person's account"
    assert ext.account_origin == ExternalUser.AccountOrigin.CREATED


def test_a_look_alike_stored_email_is_not_linked_to_a_wecom_member(sim):
    """The other direction: a local account registered with a look-alike address must not receive the real
    member's identity. PostgreSQL's lower() folds the stored look-alike (SQLite's is ASCII-only, so this fails
    before the fix on PostgreSQL only); with a batch size of 2 the email index is used from batch 2 on."""
    squatter = User.objects.create_user("squatter", f"{KELVIN}ate@corp.example", "pw-squat-123")
    sim.add_user({"userid": "zz.kate", "name": "Kate", "department": [1], "email": "kate@corp.example"},
                 deliver=False)
    source = _source(sim)
    with override_settings(WECOM_SYNC={**django_settings.WECOM_SYNC, "BATCH_SIZE": 2}):
        run_full_sync(source)
    ext = ExternalUser.objects.get(source=source, userid_key="zz.kate")
    assert ext.user_id != squatter.pk, "a member was linked to an account whose email only looks like theirs"


def test_a_new_account_never_gets_a_case_variant_of_an_existing_login(sim):
    """userid "ROOT" must not become a second login "ROOT" next to the superuser "root" (look-alike admin)."""
    User.objects.create_superuser("root", "boss@corp.example", "pw-root-123")
    sim.add_user({"userid": "ROOT", "name": "Mallory", "department": [1], "email": "m@evil.example"},
                 deliver=False)
    source = _source(sim)
    run_full_sync(source)
    ext = ExternalUser.objects.get(source=source, userid_key="root")
    assert ext.user.username.lower() != "root", ext.user.username
    assert User.objects.filter(username__iexact="root").count() == 1
