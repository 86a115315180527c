"""Fuzz of the callback endpoint: forged or malformed callbacks across every field are never accepted.

WECOM_FUZZ_EXAMPLES (default 10,000) examples are split across the strategies below; each request goes to the
real view through Django's test client. Every one must be refused (4xx, never 200 and never 500) and
nothing may be written to any table. ``WECOM_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz_callbacks.py``
runs a longer campaign on demand.

"Malformed" inputs that still carry a correct signature are built so that they cannot be a valid event
(truncated or entity-laden XML, a foreign receive id, broken framing), because any well-formed event
signed with the real Token is, rightly, stored (tests/test_callback_view.py checks that side).
"""

from __future__ import annotations

import base64
import logging
import os
import struct
from collections import Counter
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from django.apps import apps
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import AES_KEY, TOKEN, make_source
from wecom_sync.crypto import WeComCrypto, pkcs7_pad, signature
from wecom_sync.simulator.events import event_xml

pytestmark = [pytest.mark.django_db, pytest.mark.fuzz]

TOTAL = int(os.environ.get("WECOM_FUZZ_EXAMPLES", "10000"))
#: Share of the examples each strategy gets.
SHARES = {
    "signature": 0.18,
    "params": 0.12,
    "envelope": 0.16,
    "encrypt": 0.20,
    "inner": 0.16,
    "url_verification": 0.12,
    "huge": 0.02,
    "path": 0.04,
}
REFUSED = {400, 403, 404, 405, 413}
RAN: Counter[str] = Counter()
OTHER_AES_KEY = "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlk0"
CORP_ID = "wwfuzz0000000001"


def budget(name: str) -> settings:
    """Hypothesis settings giving this strategy its share of WECOM_FUZZ_EXAMPLES."""
    return settings(max_examples=max(10, int(TOTAL * SHARES[name])), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def quiet_rejections() -> Iterator[None]:
    """Each refusal logs a warning; thousands of them would only slow the run down (errors still show)."""
    loggers = [logging.getLogger(name) for name in ("wecom_sync.callback", "django.request")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.fixture
def source():  # noqa: ANN201
    return make_source(corp_id=CORP_ID, token=TOKEN, encoding_aes_key=AES_KEY)


def table_counts() -> dict[str, int]:
    """Row counts of every model (the whole database, as the ORM sees it)."""
    return {model._meta.label: model._default_manager.count() for model in apps.get_models()}


@pytest.fixture
def unchanged_db(source) -> Iterator[None]:  # noqa: ANN001
    """After the test, every table has exactly the rows it had before."""
    before = table_counts()
    yield
    assert table_counts() == before


CRYPTO = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
CHANGE_TYPES = ["create_user", "update_user", "delete_user", "create_party", "update_party", "delete_party"]


def valid_event(change_type: str = "update_user", userid: str = "zhangsan", create_time: int = 1700000000) -> str:
    """A well-formed change_contact event for the fuzz corp."""
    fields = [("UserID", userid)] if "user" in change_type else [("Id", 7), ("ParentId", 1)]
    return event_xml(CORP_ID, change_type, fields, create_time)


def envelope(encrypted: str, to_user: str = CORP_ID) -> str:
    return f"<xml><ToUserName><![CDATA[{to_user}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"


def post(client: Client, slug: str, body: bytes | str, params: dict[str, str] | str, name: str) -> int:
    query = params if isinstance(params, str) else urlencode(params)
    response = client.post(f"/wecom/callback/{slug}/?{query}", data=body, content_type="text/xml")
    RAN[name] += 1
    return response.status_code


def check(status: int) -> None:
    from wecom_sync.models import CallbackEvent, SyncRun

    assert status in REFUSED, status
    assert not CallbackEvent.objects.exists()
    assert not SyncRun.objects.exists()


texts = st.text(max_size=80)
digits = st.integers(min_value=-(10**20), max_value=10**20).map(str)
timestamps = st.one_of(digits, texts, st.just(""), st.just("1700000000"))
nonces = st.one_of(st.text(max_size=40), st.integers(0, 10**12).map(str))
hex40 = st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)
events = st.builds(valid_event, st.sampled_from(CHANGE_TYPES), st.text(min_size=1, max_size=30).filter(
    lambda s: "]]>" not in s), st.integers(0, 2**40))


# -- signature: a correct envelope, a forged msg_signature ----------------------------------------------

@st.composite
def forged_signatures(draw) -> tuple[str, dict[str, str]]:  # noqa: ANN001
    ts, nonce = draw(timestamps), draw(nonces)
    encrypted = CRYPTO.encrypt(draw(events))
    kind = draw(st.sampled_from(["random", "other_token", "other_ts", "other_nonce", "other_payload", "garbage",
                                 "truncated", "missing_token"]))
    if kind == "random":
        sig = draw(hex40)
    elif kind == "other_token":
        sig = signature(draw(st.text(min_size=1, max_size=43).filter(lambda t: t != TOKEN)), ts, nonce, encrypted)
    elif kind == "other_ts":
        sig = signature(TOKEN, ts + draw(st.text(min_size=1, max_size=5)), nonce, encrypted)
    elif kind == "other_nonce":
        sig = signature(TOKEN, ts, nonce + draw(st.text(min_size=1, max_size=5)), encrypted)
    elif kind == "other_payload":
        sig = signature(TOKEN, ts, nonce, CRYPTO.encrypt(draw(events)))
    elif kind == "garbage":
        sig = draw(st.text(min_size=1, max_size=100))
    elif kind == "truncated":
        sig = signature(TOKEN, ts, nonce, encrypted)[: draw(st.integers(0, 39))]
    else:
        sig = signature("", ts, nonce, encrypted)
    params = {"msg_signature": sig, "timestamp": ts, "nonce": nonce}
    return envelope(encrypted), params


@budget("signature")
@given(forged_signatures())
def test_forged_signatures_are_refused(source, unchanged_db, case):
    body, params = case
    check(post(Client(), source.slug, body, params, "signature"))


# -- query parameters: missing, repeated, odd ---------------------------------------------------------------

@st.composite
def odd_params(draw) -> tuple[str, str]:  # noqa: ANN001
    ts, nonce = draw(timestamps), draw(nonces)
    encrypted = CRYPTO.encrypt(draw(events))
    good = {"msg_signature": signature(TOKEN, ts, nonce, encrypted), "timestamp": ts, "nonce": nonce}
    # Drop one or more parameters, then add noise; a dropped parameter never comes back with its real value.
    dropped = draw(st.sets(st.sampled_from(sorted(good)), min_size=1))
    pairs = [(k, v) for k, v in good.items() if k not in dropped]
    extra_names = st.sampled_from(["msg_signature", "MSG_SIGNATURE", "signature", "timestamp", "nonce", "echostr",
                                   "msg_signature[]", "", "access_token"])
    for name, value in draw(st.lists(st.tuples(extra_names, st.one_of(texts, hex40)), max_size=4)):
        if name in good and value.strip().lower() == good[name].strip().lower():
            continue
        pairs.append((name, value))
    return envelope(encrypted), urlencode(pairs)


@budget("params")
@given(odd_params())
def test_missing_or_odd_query_parameters_are_refused(source, unchanged_db, case):
    body, query = case
    check(post(Client(), source.slug, body, query, "params"))


# -- envelope XML: malformed, entity tricks, no usable Encrypt ---------------------------------------------

ENTITY_TRICKS = [
    '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><xml><Encrypt>&c;{enc}</Encrypt></xml>',
    '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><Encrypt>{enc}&x;</Encrypt></xml>',
    '<?xml version="1.0"?><!DOCTYPE xml SYSTEM "http://127.0.0.1:1/evil.dtd"><xml><Encrypt>{enc}</Encrypt></xml>',
    '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY % p SYSTEM "http://127.0.0.1:1/p">%p;]><xml><Encrypt>{enc}</Encrypt></xml>',
    '<!DOCTYPE xml [<!ENTITY e "{enc}">]><xml><Encrypt>&e;</Encrypt></xml>',
    '<?xml version="1.0"?><!DOCTYPE xml><xml><Encrypt>{enc}</Encrypt></xml>',
    '<xml><Encrypt><![CDATA[{enc}]]></Encrypt>',
    '<xml><Encrypt>{enc}</Encrypt></xml><xml/>',
    '<xml><Encrypt><![CDATA[{enc}]]</Encrypt></xml>',
    '<xml><Encrypt attr="{enc}"/></xml>',
    '<xml><encrypt>{enc}</encrypt></xml>',
    '<xml><Wrapper><Encrypt>{enc}</Encrypt></Wrapper></xml>',
    '<xml xmlns:x="urn:x"><x:Encrypt>{enc}</x:Encrypt></xml>',
    '<?xml version="1.0" encoding="utf-16"?><xml><Encrypt>{enc}</Encrypt></xml>',
    '<?xml version="1.0" encoding="no-such-codec"?><xml><Encrypt>{enc}</Encrypt></xml>',
    '<?xml-stylesheet href="http://127.0.0.1:1/x"?><xml><Encrypt></Encrypt><Encrypt>{enc}</Encrypt></xml>',
    '<xml><Encrypt>{enc}\x00</Encrypt></xml>',
    '<xml><Encrypt>&#0;{enc}</Encrypt></xml>',
]


@st.composite
def bad_envelopes(draw) -> tuple[bytes, dict[str, str]]:  # noqa: ANN001
    ts, nonce = draw(st.integers(0, 2**33).map(str)), draw(st.integers(0, 10**10).map(str))
    encrypted = CRYPTO.encrypt(draw(events))
    good = envelope(encrypted)
    kind = draw(st.sampled_from(["trick", "truncate", "inject", "bytes", "text", "empty_encrypt"]))
    if kind == "trick":
        body = draw(st.sampled_from(ENTITY_TRICKS)).replace("{enc}", encrypted).encode("utf-8", "replace")
    elif kind == "truncate":
        # cut inside the document, before the closing root tag: never well-formed
        body = good[: draw(st.integers(0, good.rindex("</xml>")))].encode()
    elif kind == "inject":
        # between two tags (never inside the CDATA of ToUserName, where anything goes)
        at = draw(st.sampled_from([i for i, c in enumerate(good[: good.index("<Encrypt>") + 1]) if c == "<"]))
        junk = draw(st.sampled_from(["<", "&", "</x>", "<!--", "<!DOCTYPE x>", "\x01", "<?xml?>", "]]>"]))
        body = (good[:at] + junk + good[at:]).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=2000))
    elif kind == "text":
        body = draw(st.text(max_size=2000)).encode("utf-8", "surrogatepass")
    else:
        body = draw(st.sampled_from(["<xml><Encrypt></Encrypt></xml>", "<xml><Encrypt><![CDATA[  ]]></Encrypt></xml>",
                                     "<xml/>", "<xml><ToUserName>x</ToUserName></xml>"])).encode()
    # Signed over the real Encrypt, so only the envelope decides.
    return body, {"msg_signature": signature(TOKEN, ts, nonce, encrypted), "timestamp": ts, "nonce": nonce}


@budget("envelope")
@given(bad_envelopes())
def test_malformed_envelopes_and_entity_tricks_are_refused(source, unchanged_db, case):
    body, params = case
    check(post(Client(), source.slug, body, params, "envelope"))


# -- Encrypt: correctly signed, but not a payload of this source ---------------------------------------------

def _frame(message: bytes, receive_id: bytes, declared: int | None = None, prefix: bytes = b"\0" * 16) -> bytes:
    length = len(message) if declared is None else declared
    return prefix + struct.pack(">I", length & 0xFFFFFFFF) + message + receive_id


def _aes(plain: bytes, key_text: str = AES_KEY, pad: bool = True) -> str:
    from Crypto.Cipher import AES

    key = base64.b64decode(key_text + "=")
    data = pkcs7_pad(plain) if pad else plain
    return base64.b64encode(AES.new(key, AES.MODE_CBC, iv=key[:16]).encrypt(data)).decode()


@st.composite
def bad_payloads(draw) -> str:  # noqa: ANN001
    message = draw(events).encode()
    kind = draw(st.sampled_from(["other_corp", "other_key", "base64_junk", "blocks_junk", "last_block_flip",
                                 "length_lie", "short", "no_padding", "truncated_b64", "non_b64"]))
    if kind == "other_corp":
        corp = draw(st.text(max_size=30).filter(lambda c: c != CORP_ID))
        return WeComCrypto(TOKEN, AES_KEY, corp).encrypt(message.decode())
    if kind == "other_key":
        return WeComCrypto(TOKEN, OTHER_AES_KEY, CORP_ID).encrypt(message.decode())
    if kind == "base64_junk":
        return base64.b64encode(draw(st.binary(max_size=600))).decode()
    if kind == "blocks_junk":
        return base64.b64encode(draw(st.binary(min_size=16, max_size=640).map(
            lambda b: b[: len(b) - len(b) % 16]))).decode()
    if kind == "last_block_flip":
        # Bits flipped in the last block break the padding or the receive id, never the event itself.
        blob = bytearray(base64.b64decode(CRYPTO.encrypt(message.decode())))
        at = len(blob) - 16 + draw(st.integers(0, 15))
        blob[at] ^= draw(st.integers(1, 255))
        return base64.b64encode(bytes(blob)).decode()
    if kind == "length_lie":
        declared = draw(st.one_of(st.integers(len(message) + 1, 2**32 - 1), st.integers(0, len(message) - 1)))
        return _aes(_frame(message, CORP_ID.encode(), declared))
    if kind == "short":
        return _aes(draw(st.binary(max_size=19)))
    if kind == "no_padding":
        plain = _frame(message, CORP_ID.encode())
        return _aes(plain + b"\0" * (-len(plain) % 16), pad=False)
    if kind == "truncated_b64":
        good = CRYPTO.encrypt(message.decode())
        return good[: draw(st.integers(0, len(good) - 1))]
    return draw(st.text(alphabet="!@#$%^*()-_~`<>?,.;:'\"\\|{}[]中文ü", min_size=1, max_size=200))


@budget("encrypt")
@given(bad_payloads(), st.integers(0, 2**33).map(str), st.integers(0, 10**10).map(str))
def test_encrypt_that_is_not_a_payload_of_this_source_is_refused(source, unchanged_db, encrypted, ts, nonce):
    # Correctly signed: the decryption, framing and receive-id checks are what must refuse it.
    params = {"msg_signature": signature(TOKEN, ts, nonce, encrypted.replace(" ", "+")), "timestamp": ts,
              "nonce": nonce}
    check(post(Client(), source.slug, envelope(encrypted), params, "encrypt"))


# -- inner XML: correctly encrypted and signed, but not a well-formed, safe event --------------------------

INNER_TRICKS = [
    '<!DOCTYPE xml [<!ENTITY a "x"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><xml><UserID>&b;</UserID></xml>',
    '<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><UserID>&x;</UserID></xml>',
    '<!DOCTYPE xml SYSTEM "http://127.0.0.1:1/e.dtd"><xml/>',
    '<?xml version="1.0"?><!DOCTYPE xml><xml><ChangeType>create_user</ChangeType></xml>',
    "<xml><UserID>a</UserID>",
    "<xml><UserID>a</UserId></xml>",
    "<xml>&undefined;</xml>",
    "<xml><a>1</a></xml><second/>",
    "",
    "\x00<xml/>",
]


@st.composite
def bad_inner(draw) -> str:  # noqa: ANN001
    event = draw(events)
    kind = draw(st.sampled_from(["trick", "truncate", "inject", "text"]))
    if kind == "trick":
        return draw(st.sampled_from(INNER_TRICKS))
    if kind == "truncate":
        return event[: draw(st.integers(0, event.rindex("</xml>")))]
    if kind == "inject":
        at = draw(st.integers(0, event.index("<ToUserName>")))
        return event[:at] + draw(st.sampled_from(["<", "&", "</y>", "<!DOCTYPE x>", "<!--"])) + event[at:]
    return draw(st.text(max_size=500).filter(lambda s: "<" not in s))


@budget("inner")
@given(bad_inner(), st.integers(0, 10**10).map(str))
def test_malformed_inner_xml_is_refused(source, unchanged_db, inner, nonce):
    body, params = CRYPTO.envelope_xml(inner, nonce, 1700000000)
    check(post(Client(), source.slug, body, params, "inner"))


# -- URL verification (GET): forged or undecryptable echostr ----------------------------------------------

@st.composite
def forged_verifications(draw) -> dict[str, str]:  # noqa: ANN001
    ts, nonce = draw(timestamps), draw(nonces)
    kind = draw(st.sampled_from(["forged_sig", "junk_echostr", "other_corp", "missing"]))
    if kind == "forged_sig":
        echostr = CRYPTO.encrypt(draw(st.text(max_size=40)))
        return {"msg_signature": draw(hex40), "timestamp": ts, "nonce": nonce, "echostr": echostr}
    if kind == "junk_echostr":
        echostr = draw(st.one_of(texts, st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode())))
        return {"msg_signature": signature(TOKEN, ts, nonce, echostr.replace(" ", "+")), "timestamp": ts,
                "nonce": nonce, "echostr": echostr or "x"}
    if kind == "other_corp":
        echostr = WeComCrypto(TOKEN, AES_KEY, "wwsomeoneelse").encrypt(draw(st.text(max_size=40)))
        return {"msg_signature": signature(TOKEN, ts, nonce, echostr), "timestamp": ts, "nonce": nonce,
                "echostr": echostr}
    params = {"msg_signature": draw(hex40), "timestamp": ts, "nonce": nonce, "echostr": CRYPTO.encrypt("x")}
    for name in draw(st.sets(st.sampled_from(sorted(params)), min_size=1)):
        params.pop(name)
    return params


@budget("url_verification")
@given(forged_verifications())
def test_forged_url_verifications_are_refused(source, unchanged_db, params):
    response = Client().get(f"/wecom/callback/{source.slug}/?{urlencode(params)}")
    RAN["url_verification"] += 1
    check(response.status_code)
    assert response.content == b""


# -- huge bodies and unknown sources -----------------------------------------------------------------------

@budget("huge")
@given(st.integers(1, 3 * 256 * 1024), st.sampled_from([b"A", b"<xml>", b"<Encrypt>", b"\x00\xff"]))
def test_huge_bodies_are_refused(source, unchanged_db, extra, pattern):
    from wecom_sync.conf import app_settings

    size = app_settings.CALLBACK_MAX_BODY_BYTES + extra
    body = (pattern * (size // len(pattern) + 1))[:size]
    ts, nonce = "1700000000", "1"
    status = post(Client(), source.slug, body, {"msg_signature": signature(TOKEN, ts, nonce, "x"), "timestamp": ts,
                                                "nonce": nonce}, "huge")
    assert status == 413
    check(status)


@budget("path")
@given(st.text(alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="-_"),
               min_size=1, max_size=60))
def test_valid_callbacks_to_an_unknown_source_are_refused(source, unchanged_db, slug):
    if slug == source.slug:
        slug += "-x"
    body, params = CRYPTO.envelope_xml(valid_event(), "1", 1700000000)
    check(post(Client(), slug, body, params, "path"))


def test_the_campaign_ran_its_examples():
    """Runs last in this module: the strategies together ran at least WECOM_FUZZ_EXAMPLES examples."""
    if len(RAN) < len(SHARES):
        pytest.skip("run the whole module to count the campaign")
    assert sum(RAN.values()) >= 0.95 * TOTAL, dict(RAN)
    for name, share in SHARES.items():
        assert RAN[name] >= 0.9 * max(10, int(TOTAL * share)), (name, dict(RAN))
