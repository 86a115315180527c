"""The callback endpoint: URL verification, the fixed order of checks, the inbox, hostile input."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client, RequestFactory, override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import AES_KEY, TOKEN, make_source
from wecom_sync.callbacks import dedupe_key, parse_event
from wecom_sync.crypto import WeComCrypto
from wecom_sync.models import CallbackEvent
from wecom_sync.views import _read_body, _Reject

pytestmark = pytest.mark.django_db

OTHER_KEY = "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkj"


def event_xml(change_type: str = "create_user", create_time: int = 1700000000, corp: str = "wwcorp", **fields) -> str:
    """A change_contact event as WeCom sends it (decrypted)."""
    extra = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items())
    return (
        f"<xml><ToUserName><![CDATA[{corp}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
        f"<CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        f"<Event><![CDATA[change_contact]]></Event><ChangeType><![CDATA[{change_type}]]></ChangeType>"
        f"{extra}</xml>"
    )


def signed(source, message: str, *, nonce: str = "12345", timestamp: int = 1700000000) -> tuple[str, dict]:
    return WeComCrypto(TOKEN, AES_KEY, source.corp_id).envelope_xml(message, nonce, timestamp)


def post(client: Client, source_or_slug, body, params: dict, **extra):
    slug = getattr(source_or_slug, "slug", source_or_slug)
    url = f"/wecom/callback/{slug}/"
    if params:
        url += "?" + urlencode(params)
    return client.post(url, data=body, content_type="text/xml", **extra)


def wecom_settings(**values):
    """override_settings for WECOM_SYNC keys, keeping the test encryption keys."""
    return override_settings(WECOM_SYNC={**django_settings.WECOM_SYNC, **values})


def log_keys(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("wecom_sync.")]


@pytest.fixture
def source():
    return make_source()


@pytest.fixture
def client():
    return Client(enforce_csrf_checks=True)


# -- GET: URL verification ------------------------------------------------------------------------------


def verification_params(source, echo: str = "6871534123498") -> dict:
    crypto = WeComCrypto(TOKEN, AES_KEY, source.corp_id)
    echostr = crypto.encrypt(echo)
    return {"msg_signature": crypto.sign("1700000000", "99", echostr), "timestamp": "1700000000", "nonce": "99",
            "echostr": echostr}


def test_url_verification_answers_the_plaintext_only(client, source):
    response = client.get(f"/wecom/callback/{source.slug}/", verification_params(source))
    assert response.status_code == 200
    assert response.content == b"6871534123498"
    assert response["Content-Type"].startswith("text/plain")


def test_url_verification_ignores_accept_header(client, source):
    response = client.get(f"/wecom/callback/{source.slug}/", verification_params(source), HTTP_ACCEPT="image/png")
    assert response.status_code == 200
    assert response.content == b"6871534123498"


@pytest.mark.parametrize(
    ("mutate", "status", "key"),
    [
        (lambda p: p.update(msg_signature="0" * 40), 403, "bad_signature"),
        (lambda p: p.update(nonce="100"), 403, "bad_signature"),
        (lambda p: p.pop("echostr"), 400, "missing_params"),
        (lambda p: p.pop("timestamp"), 400, "missing_params"),
    ],
)
def test_url_verification_failures(client, source, caplog, mutate, status, key):
    params = verification_params(source)
    mutate(params)
    with caplog.at_level(logging.INFO, logger="wecom_sync"):
        response = client.get(f"/wecom/callback/{source.slug}/", params)
    assert response.status_code == status
    assert response.content == b""
    assert f"wecom_sync.callback.{key}" in log_keys(caplog)


def test_url_verification_wrong_receive_id(client, source):
    crypto = WeComCrypto(TOKEN, AES_KEY, "wwsomeoneelse")
    echostr = crypto.encrypt("1")
    params = {"msg_signature": crypto.sign("1", "2", echostr), "timestamp": "1", "nonce": "2", "echostr": echostr}
    assert client.get(f"/wecom/callback/{source.slug}/", params).status_code == 403


def test_url_verification_unknown_source(client):
    assert client.get("/wecom/callback/nope/", {"msg_signature": "a", "timestamp": "1", "nonce": "2",
                                                  "echostr": "x"}).status_code == 403


def test_url_verification_is_not_a_decryption_oracle(client, source, caplog):
    """A captured event's Encrypt replayed as echostr, correctly signed, is not decrypted back."""
    crypto = WeComCrypto(TOKEN, AES_KEY, source.corp_id)
    captured = crypto.encrypt(event_xml(UserID="zhangsan", Mobile="13800000000"))
    params = {"msg_signature": crypto.sign("1700000000", "99", captured), "timestamp": "1700000000",
              "nonce": "99", "echostr": captured}
    with caplog.at_level(logging.INFO, logger="wecom_sync"):
        response = client.get(f"/wecom/callback/{source.slug}/", params)
    assert response.status_code == 403
    assert response.content == b""
    assert "wecom_sync.callback.echostr_not_plain" in log_keys(caplog)
    for shaped_wrong in ("<b>1</b>", "x" * 200, "a b"):
        response = client.get(f"/wecom/callback/{source.slug}/", verification_params(source, shaped_wrong))
        assert response.status_code == 403 and response.content == b""


def test_known_and_unknown_slugs_answer_alike_until_the_signature(client, source):
    params = verification_params(source)
    params["msg_signature"] = "0" * 40
    for path in (f"/wecom/callback/{source.slug}/", "/wecom/callback/no-such-slug/"):
        assert client.get(path).status_code == 400
        assert client.get(path, params).status_code == 403
        assert client.post(path, b"<garbage", content_type="text/xml").status_code == 400
        assert client.post(path + "?msg_signature=a&timestamp=1&nonce=2", b"<garbage",
                           content_type="text/xml").status_code == 400
        body, post_params = signed(source, event_xml(UserID="x"))
        post_params["msg_signature"] = "0" * 40
        assert post(client, path.split("/")[-2], body, post_params).status_code == 403


def test_only_get_post_and_head_are_allowed(client, source):
    path = f"/wecom/callback/{source.slug}/"
    response = client.options(path)
    assert response.status_code == 405
    assert b"Receive WeCom callbacks" not in response.content
    assert b"URL verification" not in response.content
    for method in ("put", "patch", "delete"):
        assert getattr(client, method)(path).status_code == 405
    assert client.head(path).status_code == 400  # HEAD is a GET without a body: missing parameters


# -- POST: the happy path -------------------------------------------------------------------------------


def test_post_stores_the_event_and_answers_empty_200(client, source):
    body, params = signed(source, event_xml(UserID="ZhangSan", Department="1,2", corp=source.corp_id))
    response = post(client, source, body, params)
    assert response.status_code == 200
    assert response.content == b""
    event = CallbackEvent.objects.get()
    assert event.source == source
    assert (event.event, event.change_type, event.object_id, event.create_time) == (
        "change_contact", "create_user", "zhangsan", 1700000000)
    assert event.payload["UserID"] == "ZhangSan"
    assert event.payload["Department"] == "1,2"
    assert event.status == CallbackEvent.Status.PENDING


def test_redelivery_is_stored_once(client, source):
    message = event_xml("update_user", UserID="lisi", corp=source.corp_id)
    for nonce in ("1", "2", "3"):
        body, params = signed(source, message, nonce=nonce)  # each delivery is encrypted afresh
        assert post(client, source, body, params).status_code == 200
    assert CallbackEvent.objects.count() == 1


def test_distinct_events_are_distinct_rows(client, source):
    for i, (change, fields) in enumerate(
        [("create_user", {"UserID": "a"}), ("update_user", {"UserID": "a", "NewUserID": "b"}),
         ("create_party", {"Id": "5", "ParentId": "1"}), ("update_tag", {"TagId": "3"})]
    ):
        body, params = signed(source, event_xml(change, 1700000000 + i, **fields))
        assert post(client, source, body, params).status_code == 200
    assert CallbackEvent.objects.count() == 4
    assert set(CallbackEvent.objects.values_list("object_id", flat=True)) == {"a", "5", "3"}


def test_agent_id_may_be_absent_or_empty(client, source):
    crypto = WeComCrypto(TOKEN, AES_KEY, source.corp_id)
    body, params = crypto.envelope_xml(event_xml(UserID="u1"), "5", 1700000000, agent_id="")
    assert post(client, source, body, params).status_code == 200


def test_no_throttling_and_no_authentication(client, source):
    throttled = {"DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.AnonRateThrottle"],
                 "DEFAULT_THROTTLE_RATES": {"anon": "1/day"},
                 "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"]}
    with override_settings(REST_FRAMEWORK=throttled):
        for i in range(5):
            body, params = signed(source, event_xml(UserID=f"u{i}"))
            assert post(client, source, body, params).status_code == 200
    assert CallbackEvent.objects.count() == 5


# -- POST: each failure, its status, its log key, and no row ---------------------------------------------

BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;">]><xml><Encrypt>&lol3;</Encrypt></xml>'
)
XXE = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><Encrypt>&e;</Encrypt></xml>'
EXTERNAL_DTD = '<?xml version="1.0"?><!DOCTYPE xml SYSTEM "http://127.0.0.1:1/x.dtd"><xml><Encrypt>a</Encrypt></xml>'


def _failure_cases(source):
    crypto = WeComCrypto(TOKEN, AES_KEY, source.corp_id)
    good_body, good = crypto.envelope_xml(event_xml(UserID="x"), "7", 1700000000)

    def sign(enc):
        return {"msg_signature": crypto.sign("1700000000", "7", enc), "timestamp": "1700000000", "nonce": "7"}

    other_corp = WeComCrypto(TOKEN, AES_KEY, "wwintruder").encrypt(event_xml(UserID="x"))
    other_key = WeComCrypto(TOKEN, OTHER_KEY, source.corp_id).encrypt(event_xml(UserID="x"))
    not_xml = crypto.encrypt("this is not xml")
    hostile_inner = crypto.encrypt(BILLION_LAUGHS)
    return [
        ("missing signature", good_body, {k: v for k, v in good.items() if k != "msg_signature"}, 400,
         "missing_params"),
        ("missing nonce", good_body, {k: v for k, v in good.items() if k != "nonce"}, 400, "missing_params"),
        ("empty timestamp", good_body, {**good, "timestamp": ""}, 400, "missing_params"),
        ("malformed xml", "<xml><Encrypt>", good, 400, "bad_xml"),
        ("not xml at all", "hello", good, 400, "bad_xml"),
        ("empty body", "", good, 400, "bad_xml"),
        ("billion laughs", BILLION_LAUGHS, good, 400, "bad_xml"),
        ("external entity", XXE, good, 400, "bad_xml"),
        ("external dtd", EXTERNAL_DTD, good, 400, "bad_xml"),
        ("no encrypt", "<xml><ToUserName>a</ToUserName></xml>", good, 400, "missing_encrypt"),
        ("empty encrypt", "<xml><Encrypt><![CDATA[]]></Encrypt></xml>", good, 400, "missing_encrypt"),
        ("bad signature", good_body, {**good, "msg_signature": "f" * 40}, 403, "bad_signature"),
        ("replayed with another nonce", good_body, {**good, "nonce": "8"}, 403, "bad_signature"),
        ("wrong receive id", f"<xml><Encrypt>{other_corp}</Encrypt></xml>", sign(other_corp), 403,
         "wrong_receive_id"),
        ("wrong key", f"<xml><Encrypt>{other_key}</Encrypt></xml>", sign(other_key), 403, "undecryptable"),
        ("garbage ciphertext", "<xml><Encrypt>QUJDREVGR0g=</Encrypt></xml>", sign("QUJDREVGR0g="), 403,
         "undecryptable"),
        ("not base64", "<xml><Encrypt>%%%%</Encrypt></xml>", sign("%%%%"), 403, "undecryptable"),
        ("inner not xml", f"<xml><Encrypt>{not_xml}</Encrypt></xml>", sign(not_xml), 400, "bad_event_xml"),
        ("inner hostile xml", f"<xml><Encrypt>{hostile_inner}</Encrypt></xml>", sign(hostile_inner), 400,
         "bad_event_xml"),
    ]


def test_each_failure_has_its_status_and_log_key_and_writes_nothing(client, source, caplog):
    for name, body, params, status, key in _failure_cases(source):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="wecom_sync"):
            response = post(client, source, body, params)
        assert response.status_code == status, name
        assert response.content == b"", name
        assert f"wecom_sync.callback.{key}" in log_keys(caplog), name
        assert not CallbackEvent.objects.exists(), name


def test_logs_hold_no_secret_and_no_payload(client, source, caplog):
    with caplog.at_level(logging.DEBUG):
        for _name, body, params, _status, _key in _failure_cases(source):
            post(client, source, body, params)
        body, params = signed(source, event_xml(UserID="secretive", Mobile="13800000000"))
        post(client, source, body, params)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (TOKEN, AES_KEY, "13800000000"):
        assert secret not in text


@pytest.mark.parametrize(
    ("setup", "key"),
    [
        (lambda s: None, "unknown_source"),
        (lambda s: s.__class__.objects.filter(pk=s.pk).update(enabled=False), "source_disabled"),
        (lambda s: (setattr(s, "token", ""), s.save()), "source_not_configured"),
        (lambda s: (setattr(s, "encoding_aes_key", ""), s.save()), "source_not_configured"),
        (lambda s: (setattr(s, "encoding_aes_key", "too-short"), s.save()), "source_not_configured"),
    ],
)
def test_source_not_found_disabled_or_unconfigured_is_403(client, source, caplog, setup, key):
    body, params = signed(source, event_xml(UserID="x"))
    setup(source)
    slug = "no-such-source" if key == "unknown_source" else source.slug
    with caplog.at_level(logging.INFO, logger="wecom_sync"):
        response = post(client, slug, body, params)
    assert response.status_code == 403
    assert f"wecom_sync.callback.{key}" in log_keys(caplog)
    assert not CallbackEvent.objects.exists()


def test_parameters_are_checked_before_the_source(client):
    assert post(client, "nope", "<garbage", {}).status_code == 400


def test_parameters_are_checked_before_the_body(client, source):
    with wecom_settings(CALLBACK_MAX_BODY_BYTES=10):
        assert post(client, source, "x" * 100, {"timestamp": "1"}).status_code == 400


@wecom_settings(CALLBACK_MAX_BODY_BYTES=512)
def test_body_over_the_limit_is_413(client, source, caplog):
    body, params = signed(source, event_xml(UserID="x", Name="y" * 600))
    assert len(body) > 512
    with caplog.at_level(logging.INFO, logger="wecom_sync"):
        response = post(client, source, body, params)
    assert response.status_code == 413
    assert "wecom_sync.callback.body_too_large" in log_keys(caplog)
    assert not CallbackEvent.objects.exists()


@wecom_settings(CALLBACK_MAX_BODY_BYTES=512)
def test_body_size_check_does_not_trust_content_length():
    request = RequestFactory().post("/", data=b"z" * 2000, content_type="text/xml")
    request.META["CONTENT_LENGTH"] = "10"  # lies: the stream holds 2000 bytes
    with pytest.raises(_Reject) as info:
        _read_body(request, 512)
    assert info.value.status == 413
    ok = RequestFactory().post("/", data=b"z" * 512, content_type="text/xml")
    assert _read_body(ok, 512) == b"z" * 512


def test_declared_content_length_over_the_limit_is_refused_before_reading():
    request = RequestFactory().post("/", data=b"z" * 10, content_type="text/xml")
    request.META["CONTENT_LENGTH"] = str(10**9)
    with pytest.raises(_Reject) as info:
        _read_body(request, 512)
    assert info.value.status == 413


# -- database failures answer 500 (WeCom retries), and only they do -------------------------------------


def test_database_failure_is_500_so_wecom_retries(source):
    client = Client(raise_request_exception=False)
    body, params = signed(source, event_xml(UserID="x"))
    table = CallbackEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        response = post(client, source, body, params)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
    assert response.status_code == 500
    assert not CallbackEvent.objects.exists()


def test_integrity_error_that_is_not_a_duplicate_is_500(source):
    """A constraint failure other than the dedupe key must not be mistaken for a redelivery."""
    client = Client(raise_request_exception=False)
    table = CallbackEvent._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                f"CREATE TRIGGER wecom_test_refuse BEFORE INSERT ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        else:
            cursor.execute(
                "CREATE FUNCTION wecom_test_refuse() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                f"CREATE TRIGGER wecom_test_refuse BEFORE INSERT ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION wecom_test_refuse()"
            )
    body, params = signed(source, event_xml(UserID="x"))
    response = post(client, source, body, params)
    assert response.status_code == 500
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER wecom_test_refuse{'' if connection.vendor == 'sqlite' else ' ON ' + table}")
    assert not CallbackEvent.objects.exists()


# -- fuzzing: random input never yields a 500 and never stores a row -------------------------------------

param_values = st.one_of(st.none(), st.text(max_size=60), st.sampled_from(["", "1700000000", "0" * 40]))
bodies = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=600).map(lambda s: s.encode("utf-8")),
    st.builds(lambda inner: f"<xml><Encrypt><![CDATA[{inner}]]></Encrypt></xml>".encode(), st.text(max_size=300)),
    st.builds(lambda inner: f"<xml><Encrypt>{inner}</Encrypt></xml>".encode(),
              st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= ", max_size=300)),
    st.sampled_from([BILLION_LAUGHS.encode(), XXE.encode(), EXTERNAL_DTD.encode(), b"<xml/>", b"\xef\xbb\xbf<xml>",
                     b'<?xml version="1.0" encoding="utf-16"?><xml/>', b'<?xml version="1.0" encoding="bogus"?><x/>']),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies, param_values, param_values, param_values, st.booleans())
def test_random_bodies_and_params_never_500_and_never_store(source, body, sig, ts, nonce, sign_it):
    client = Client(raise_request_exception=False)
    params = {k: v for k, v in (("msg_signature", sig), ("timestamp", ts), ("nonce", nonce)) if v is not None}
    if sign_it and ts and nonce:
        # A correct signature over whatever <Encrypt> says reaches the decryption and inner-XML checks.
        text = body.decode("utf-8", "replace")
        inner = text.split("<Encrypt>", 1)[-1].split("</Encrypt>", 1)[0].removeprefix("<![CDATA[")
        inner = inner.removesuffix("]]>").strip()
        params["msg_signature"] = WeComCrypto(TOKEN, AES_KEY, source.corp_id).sign(ts, nonce, inner)
    response = post(client, source, body, params)
    assert response.status_code in (400, 403, 404, 413)
    assert not CallbackEvent.objects.exists()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300).filter(lambda s: "<" not in s))
def test_random_encrypted_plaintext_is_400_not_500(source, plaintext):
    client = Client(raise_request_exception=False)
    body, params = signed(source, plaintext)
    assert post(client, source, body, params).status_code == 400
    assert not CallbackEvent.objects.exists()


# -- parsing helpers ------------------------------------------------------------------------------------


def test_parse_event_nested_and_repeated_elements():
    fields = parse_event(
        "<xml><UserID>u</UserID><ExtAttr><Item><Name>a</Name><Type>0</Type><Text><Value>1</Value></Text></Item>"
        "<Item><Name>b</Name><Type>1</Type><Web><Title>t</Title><Url>http://x</Url></Web></Item></ExtAttr></xml>"
    )
    assert fields["UserID"] == "u"
    assert fields["ExtAttr"]["Item"][0]["Text"]["Value"] == "1"
    assert fields["ExtAttr"]["Item"][1]["Web"]["Url"] == "http://x"


def test_parse_event_bounds_depth():
    deep = "<a>" * 500 + "x" + "</a>" * 500
    fields = parse_event(f"<xml><UserID>u</UserID>{deep}</xml>")
    assert fields["UserID"] == "u"


def test_dedupe_key_is_a_digest_of_the_whole_message():
    a = {"Event": "change_contact", "CreateTime": "1", "ChangeType": "update_user", "UserID": "Zhang"}
    # A retry decrypts to the same fields (in any order): same key.
    assert dedupe_key(a) == dedupe_key(dict(reversed(list(a.items()))))
    assert dedupe_key(a) != dedupe_key({**a, "CreateTime": "2"})
    assert dedupe_key(a) != dedupe_key({**a, "NewUserID": "li"})
    assert dedupe_key(a) != dedupe_key({**a, "ChangeType": "delete_user"})
    # Two different changes to one member in the same second are two events (issue 12, point 7).
    assert dedupe_key({**a, "Name": "first"}) != dedupe_key({**a, "Name": "second"})
    assert dedupe_key({**a, "Department": "2"}) != dedupe_key({**a, "Department": "3"})
    assert len(dedupe_key(a)) <= 255


xml_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="<>&]"), max_size=40
)
field_names = st.sampled_from(["UserID", "NewUserID", "Id", "ParentId", "Name", "Department", "CreateTime",
                               "ChangeType", "Event", "TagId", "Status", "X-Custom", "Order"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(field_names, xml_text), max_size=8))
def test_any_well_formed_event_is_stored_once(source, fields):
    """Whatever a correctly signed event says, it is stored (once) and never answered with a 500."""
    client = Client(raise_request_exception=False)
    CallbackEvent.objects.all().delete()
    inner = "<xml>" + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields) + "</xml>"
    for nonce in ("1", "2"):
        body, params = signed(source, inner, nonce=nonce)
        assert post(client, source, body, params).status_code == 200
    assert CallbackEvent.objects.count() == 1


def test_url_verification_survives_an_unencoded_plus(client, source):
    """A proxy (or WeCom) that leaves '+' unencoded makes it a space in the query: still verified."""
    crypto = WeComCrypto(TOKEN, AES_KEY, source.corp_id)
    for i in range(50):  # find an echostr with a '+' in it
        echostr = crypto.encrypt(f"echo-{i}")
        if "+" in echostr:
            break
    assert "+" in echostr
    sig = crypto.sign("1700000000", "5", echostr)
    raw = f"msg_signature={sig}&timestamp=1700000000&nonce=5&echostr={echostr.replace('/', '%2F')}"
    response = client.get(f"/wecom/callback/{source.slug}/?{raw}")
    assert response.status_code == 200
    assert response.content == f"echo-{i}".encode()


def test_unreadable_secrets_fail_one_source_with_503(client, source, caplog):
    """A source whose secrets were written with a key that is gone answers 503; the others keep working."""
    with wecom_settings(ENCRYPTION_KEYS=["a-key-that-was-lost-0123456789abcdef"]):
        lost = make_source(slug="lost-keys")
    body, params = signed(lost, event_xml(UserID="x"))
    with caplog.at_level(logging.INFO, logger="wecom_sync"):
        response = post(client, lost, body, params)
        verification = client.get(f"/wecom/callback/{lost.slug}/", verification_params(lost))
    assert response.status_code == 503 and verification.status_code == 503
    assert "wecom_sync.callback.secrets_unreadable" in log_keys(caplog)
    body, params = signed(source, event_xml(UserID="x"))
    assert post(client, source, body, params).status_code == 200
