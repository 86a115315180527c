"""wecom_sync.crypto: known-answer vectors, typed errors on bad input, and round trips against wechatpy."""

from __future__ import annotations

import base64
import re
import struct

import pytest
from Crypto.Cipher import AES
from hypothesis import given, settings
from hypothesis import strategies as st
from wechatpy.enterprise.crypto import PrpCrypto as WechatpyPrpCrypto
from wechatpy.enterprise.crypto import WeChatCrypto as WechatpyCrypto
from wechatpy.exceptions import InvalidSignatureException

from wecom_sync.crypto import (
    WeComCrypto,
    decode_aes_key,
    generate_encoding_aes_key,
    generate_token,
    is_valid_token,
    pkcs7_pad,
    pkcs7_unpad,
    signature,
)
from wecom_sync.exceptions import CryptoError, DecryptError, InvalidKeyError, ReceiveIdError, SignatureError

# V2: the official worked example (wecom-protocol.md §4).
V2_TOKEN = "QDG6eK"
V2_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
V2_CORP = "wx5823bf96d3bd56c7"
V2_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/s"
    "YYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJ"
    "YuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGU"
    "callcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDY"
    "A5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
)

# V3: wechatpy's enterprise vectors.
V3_TOKEN = "123456"
V3_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
V3_CORP = "wx49f0ab532d5d035a"
V3_ECHOSTR = "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q=="
V3_DECRYPT = (
    "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283d"
    "Gymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwB"
    "iT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54S"
    "NdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91"
    "eBdCRxthuL0="
)
V3_REPLY = (
    "<xml>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[test]]></Content>\n"
    "<FromUserName><![CDATA[wx49f0ab532d5d035a]]></FromUserName>\n<ToUserName><![CDATA[messense]]></ToUserName>\n"
    "<AgentID>1</AgentID>\n<CreateTime>1411525903</CreateTime>\n</xml>"
)
V3_REPLY_ENCRYPT = (
    "9s4gMv99m88kKTh/H8IdkOiMg6bisoy3ypwy9H4hvSPe9nsGaqyw5hhSjdYbcrKk+j3nba4HMOTzHrluLBYqxgNcBqGsL8GqxlhZgURn"
    "AtObvesEl5nZ+uBE8bviY0LWke8Zy9V/QYKxNV2FqllNXcfmstttyIkMKCCmVbCFM2JTF5wY0nFhHZSjPUL2Q1qvSUCUld+/WIXrx0oy"
    "KQmpB6o8NRrrNrsDf03oxI1p9FxUgMnwKKZeOA/uu+2IEvEBtb7muXsVbwbgX05UPPJvFurDXafG0RQyPR+mf1nDnAtQmmNOuiR5MIkd"
    "Q39xn1vWwi1O5oazPoQJz0nTYjxxEE8kv3kFxtAGVRe3ypD3WeK2XeFYFMNMpatF9XiKzHo3"
)


def v2() -> WeComCrypto:
    return WeComCrypto(V2_TOKEN, V2_KEY, V2_CORP)


def v3() -> WeComCrypto:
    return WeComCrypto(V3_TOKEN, V3_KEY, V3_CORP)


def raw_encrypt(key_text: str, plain: bytes) -> str:
    """AES-CBC encrypt already-framed-and-padded bytes with the scheme's key and IV (to forge bad payloads)."""
    key = decode_aes_key(key_text)
    return base64.b64encode(AES.new(key, AES.MODE_CBC, iv=key[:16]).encrypt(plain)).decode()


# -- known answers --------------------------------------------------------------------------------------


def test_v2_url_verification():
    assert (
        v2().verify_url(
            "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
            "1409659589",
            "263014780",
            "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==",
        )
        == "1616140317555161061"
    )


def test_v2_post_decrypts_to_the_documented_message():
    text = v2().decrypt_message("477715d11cdb4164915debcba66cb864d751f3e6", "1409659813", "1372623149", V2_ENCRYPT)
    assert len(text.encode("utf-8")) == 284
    assert "<FromUserName><![CDATA[mycreate]]></FromUserName>" in text
    assert "<CreateTime>1409659813</CreateTime>" in text
    assert "<Content><![CDATA[hello]]></Content>" in text
    assert "<MsgId>4561255354251345929</MsgId>" in text
    assert "<AgentID>218</AgentID>" in text


def test_v2_post_padding_is_30_and_receive_id_is_the_corp():
    key = decode_aes_key(V2_KEY)
    plain = AES.new(key, AES.MODE_CBC, iv=key[:16]).decrypt(base64.b64decode(V2_ENCRYPT))
    assert plain[-1] == 30
    unpadded = pkcs7_unpad(plain)
    (length,) = struct.unpack(">I", unpadded[16:20])
    assert length == 284
    assert unpadded[20 + length :] == V2_CORP.encode()


def test_v3_check_signature_and_echostr():
    assert v3().verify_url("dd6b9c95b495b3f7e2901bfbc76c664930ffdb96", "1411443780", "437374425", V3_ECHOSTR) == (
        "5927782489442352469"
    )
    with pytest.raises(SignatureError):
        v3().verify_url("dd6b9c95b495b3f7e2901bfbc76c664930ffdb96", "1411443780", "437374424", V3_ECHOSTR)


def test_v3_decrypt():
    text = v3().decrypt_message("74d92dfeb87ba7c714f89d98870ae5eb62dff26d", "1411525903", "461056294", V3_DECRYPT)
    assert "<Content><![CDATA[test]]></Content>" in text
    assert "<FromUserName><![CDATA[messense]]></FromUserName>" in text


def test_v3_deterministic_encrypt():
    parts = v3().encrypt_message(V3_REPLY, "461056294", 1411525903, random_prefix=b"1234567890123456")
    assert parts == {
        "Encrypt": V3_REPLY_ENCRYPT,
        "MsgSignature": "407518b7649e86ef23978113f92d27afa9296533",
        "TimeStamp": "1411525903",
        "Nonce": "461056294",
    }


def test_reply_xml_and_envelope_are_signed_consistently():
    crypto = v3()
    reply = crypto.encrypted_reply_xml("<xml>hi</xml>", "42", 1700000000)
    encrypt = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]>", reply).group(1)
    sig = re.search(r"<MsgSignature><!\[CDATA\[(.*?)\]\]>", reply).group(1)
    assert "<TimeStamp>1700000000</TimeStamp>" in reply
    assert crypto.decrypt_message(sig, "1700000000", "42", encrypt) == "<xml>hi</xml>"
    body, params = crypto.envelope_xml("<xml>ev</xml>", "7", 1700000001, agent_id="1000002")
    assert params["timestamp"] == "1700000001" and params["nonce"] == "7"
    assert "<AgentID><![CDATA[1000002]]></AgentID>" in body
    encrypt = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]>", body).group(1)
    assert crypto.decrypt_message(params["msg_signature"], "1700000001", "7", encrypt) == "<xml>ev</xml>"


def test_signature_is_order_independent_sha1():
    assert signature("b", "a", "d", "c") == signature("a", "b", "c", "d")
    assert signature("a", "b", "c", "d") == "81fe8bfe87576c3ecb22426f8e57847382917acf"  # sha1("abcd")


def test_signature_comparison_accepts_upper_case_and_rejects_garbage():
    crypto = v3()
    sig = crypto.sign("1", "2", "x")
    crypto.verify(sig.upper(), "1", "2", "x")
    for bad in ("", "0" * 40, sig[:-1], sig + "0", "é" * 40, None):
        with pytest.raises(SignatureError):
            crypto.verify(bad, "1", "2", "x")


# -- configuration errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["", "short", V3_KEY[:-1], V3_KEY + "A", V3_KEY[:-1] + "=", V3_KEY[:-1] + "+", V3_KEY[:-1] + "é", None, 123],
)
def test_invalid_keys_raise_invalid_key_error(key):
    with pytest.raises(InvalidKeyError):
        WeComCrypto(V3_TOKEN, key, V3_CORP)


def test_generated_keys_and_tokens_are_valid():
    for _ in range(20):
        key = generate_encoding_aes_key()
        assert len(decode_aes_key(key)) == 32
        token = generate_token()
        assert is_valid_token(token) and len(token) == 32
    assert not is_valid_token("") and not is_valid_token("a" * 33) and not is_valid_token("tok en")


def test_repr_holds_no_secret():
    crypto = v3()
    assert V3_TOKEN not in repr(crypto) and V3_KEY not in repr(crypto)


# -- hostile or broken payloads: always a typed error -----------------------------------------------------


def test_wrong_receive_id():
    encrypted = WeComCrypto(V3_TOKEN, V3_KEY, "wwanothercorp").encrypt("<xml/>")
    with pytest.raises(ReceiveIdError):
        v3().decrypt(encrypted)


def test_wrong_key_is_a_decrypt_error():
    encrypted = v2().encrypt("<xml>secret</xml>")
    other = WeComCrypto(V2_TOKEN, V3_KEY, V2_CORP)
    with pytest.raises(CryptoError):
        other.decrypt(encrypted)


@pytest.mark.parametrize("pad", [0, 33, 200])
def test_bad_padding_length(pad):
    framed = b"R" * 16 + struct.pack(">I", 3) + b"abc" + V3_CORP.encode()
    plain = framed + b"\x00" * (-len(framed) % 32)
    plain = plain[:-1] + bytes([pad])
    with pytest.raises(DecryptError):
        v3().decrypt(raw_encrypt(V3_KEY, plain))


def test_inconsistent_padding_bytes():
    framed = b"R" * 16 + struct.pack(">I", 3) + b"abc" + V3_CORP.encode()
    padded = pkcs7_pad(framed)
    n = padded[-1]
    assert n >= 2
    broken = padded[:-2] + bytes([n ^ 1, n])
    with pytest.raises(DecryptError):
        v3().decrypt(raw_encrypt(V3_KEY, broken))


def test_declared_length_larger_than_payload():
    framed = b"R" * 16 + struct.pack(">I", 10_000) + b"abc" + V3_CORP.encode()
    with pytest.raises(DecryptError):
        v3().decrypt(raw_encrypt(V3_KEY, pkcs7_pad(framed)))


def test_declared_length_swallowing_the_receive_id_is_a_receive_id_error():
    framed = b"R" * 16 + struct.pack(">I", 3 + len(V3_CORP)) + b"abc" + V3_CORP.encode()
    with pytest.raises(ReceiveIdError):
        v3().decrypt(raw_encrypt(V3_KEY, pkcs7_pad(framed)))


def test_truncated_frame_shorter_than_the_header():
    with pytest.raises(DecryptError):
        v3().decrypt(raw_encrypt(V3_KEY, pkcs7_pad(b"R" * 10)))


def test_non_utf8_message():
    framed = b"R" * 16 + struct.pack(">I", 2) + b"\xff\xfe" + V3_CORP.encode()
    with pytest.raises(DecryptError):
        v3().decrypt(raw_encrypt(V3_KEY, pkcs7_pad(framed)))


@pytest.mark.parametrize(
    "payload",
    ["", "!!!", "a", "YWJj", V3_DECRYPT[:-8], V3_DECRYPT[:40], "é" * 44, base64.b64encode(b"x" * 15).decode()],
)
def test_malformed_base64_or_block_length(payload):
    with pytest.raises(DecryptError):
        v3().decrypt(payload)


def test_pkcs7_round_trip_and_full_block():
    assert pkcs7_pad(b"") == bytes([32]) * 32
    assert pkcs7_pad(b"a" * 32)[-1] == 32
    for n in range(70):
        assert pkcs7_unpad(pkcs7_pad(b"x" * n)) == b"x" * n
    with pytest.raises(DecryptError):
        pkcs7_unpad(b"")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_random_strings_only_raise_typed_errors(payload):
    try:
        v3().decrypt(payload)
    except CryptoError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=320))
def test_random_ciphertext_only_raises_typed_errors(blob):
    blob = blob + b"\x00" * (-len(blob) % 16)
    try:
        result = v3().decrypt(base64.b64encode(blob).decode())
    except CryptoError:
        return
    assert isinstance(result, str)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_framed_plaintext_only_raises_typed_errors(inner):
    # Well padded, so decryption reaches the framing checks with arbitrary (often lying) lengths.
    try:
        result = v3().decrypt(raw_encrypt(V3_KEY, pkcs7_pad(inner)))
    except CryptoError:
        return
    assert isinstance(result, str)


# -- round trips against wechatpy (an independent implementation) ------------------------------------------

tokens = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=32)
keys = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=43, max_size=43)
corp_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=32).map(lambda s: "ww" + s)
nonces = st.integers(min_value=0, max_value=10**12).map(str)
timestamps = st.integers(min_value=1_000_000_000, max_value=4_000_000_000).map(str)
messages = st.text(max_size=600)


def _xml_field(xml: str, name: str) -> str:
    match = re.search(rf"<{name}>(?:<!\[CDATA\[)?(.*?)(?:\]\]>)?</{name}>", xml, re.S)
    assert match is not None, name
    return match.group(1)


@settings(max_examples=150, deadline=None)
@given(tokens, keys, corp_ids, nonces, timestamps, messages)
def test_ours_encrypt_wechatpy_decrypts(token, key, corp, nonce, ts, message):
    parts = WeComCrypto(token, key, corp).encrypt_message(message, nonce, ts)
    theirs = WechatpyCrypto(token, key, corp)
    assert theirs.decrypt_message({"Encrypt": parts["Encrypt"]}, parts["MsgSignature"], ts, nonce) == message
    with pytest.raises(InvalidSignatureException):
        theirs.decrypt_message({"Encrypt": parts["Encrypt"]}, parts["MsgSignature"], ts, nonce + "1")


@settings(max_examples=150, deadline=None)
@given(tokens, keys, corp_ids, nonces, timestamps, messages)
def test_wechatpy_encrypt_ours_decrypts(token, key, corp, nonce, ts, message):
    reply = WechatpyCrypto(token, key, corp).encrypt_message(message, nonce, ts)
    encrypt = _xml_field(reply, "Encrypt")
    sig = _xml_field(reply, "MsgSignature")
    ours = WeComCrypto(token, key, corp)
    assert ours.decrypt_message(sig, ts, nonce, encrypt) == message
    with pytest.raises(SignatureError):
        ours.decrypt_message(sig, ts, nonce + "1", encrypt)
    with pytest.raises(ReceiveIdError):
        WeComCrypto(token, key, corp + "x").decrypt_message(sig, ts, nonce, encrypt)


@settings(max_examples=100, deadline=None)
@given(tokens, keys, corp_ids, nonces, timestamps, st.text(alphabet="0123456789", min_size=1, max_size=20))
def test_url_verification_both_ways(token, key, corp, nonce, ts, echo):
    ours = WeComCrypto(token, key, corp)
    theirs = WechatpyCrypto(token, key, corp)
    # ours -> wechatpy
    echostr = ours.encrypt(echo)
    assert theirs.check_signature(ours.sign(ts, nonce, echostr), ts, nonce, echostr) == echo
    # wechatpy -> ours
    echostr = WechatpyPrpCrypto(decode_aes_key(key)).encrypt(echo, corp).decode()
    from wechatpy.crypto import _get_signature

    assert ours.verify_url(_get_signature(token, ts, nonce, echostr), ts, nonce, echostr) == echo
    # A proxy that decoded "+" as a space is tolerated.
    assert ours.verify_url(ours.sign(ts, nonce, echostr), ts, nonce, echostr.replace("+", " ")) == echo
