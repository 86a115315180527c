"""WeCom callback crypto (the WXBizMsgCrypt scheme): signatures, encryption and decryption.

Plain Python with pycryptodome; no Django import. See shared/wecom-protocol.md §4 for the scheme:
AES-256-CBC with IV = key[:16], PKCS#7 padding to a 32-byte block, and a plaintext framed as
random(16) | big-endian length(4) | message | receive id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
import time

from Crypto.Cipher import AES

from .exceptions import DecryptError, EncryptError, InvalidKeyError, ReceiveIdError, SignatureError

BLOCK_SIZE = 32
_KEY_RE = re.compile(r"^[A-Za-z0-9]{43}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9]{1,32}$")


def decode_aes_key(encoding_aes_key: str) -> bytes:
    """Return the 32-byte AES key encoded by a 43-character EncodingAESKey."""
    if not isinstance(encoding_aes_key, str) or not _KEY_RE.match(encoding_aes_key):
        raise InvalidKeyError("EncodingAESKey must be exactly 43 characters from [A-Za-z0-9].")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidKeyError("EncodingAESKey is not valid base64.") from exc
    if len(key) != 32:
        raise InvalidKeyError("EncodingAESKey does not decode to 32 bytes.")
    return key


def is_valid_token(token: str) -> bool:
    """Tell whether a callback Token has WeCom's shape (1 to 32 letters and digits)."""
    return isinstance(token, str) and bool(_TOKEN_RE.match(token))


def generate_token(length: int = 32) -> str:
    """Return a random callback Token of letters and digits."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(alphabet[b % len(alphabet)] for b in _unbiased_bytes(length, len(alphabet)))


def generate_encoding_aes_key() -> str:
    """Return a random 43-character EncodingAESKey."""
    return base64.b64encode(os.urandom(32)).decode("ascii").rstrip("=").replace("+", "x").replace("/", "y")[:43]


def _unbiased_bytes(count: int, modulus: int) -> list[int]:
    limit = 256 - (256 % modulus)
    out: list[int] = []
    while len(out) < count:
        out.extend(b for b in os.urandom(count * 2) if b < limit)
    return out[:count]


def signature(token: str, timestamp: str, nonce: str, payload: str) -> str:
    """Return the msg_signature of a payload: sha1 over the four strings sorted and joined."""
    parts = sorted([str(token), str(timestamp), str(nonce), str(payload)])
    return hashlib.sha1("".join(parts).encode("utf-8")).hexdigest()  # noqa: S324 - protocol-mandated


def pkcs7_pad(data: bytes, block_size: int = BLOCK_SIZE) -> bytes:
    """Pad to a multiple of block_size with PKCS#7 (1..block_size bytes are always added)."""
    n = block_size - (len(data) % block_size)
    return data + bytes([n]) * n


def pkcs7_unpad(data: bytes, block_size: int = BLOCK_SIZE) -> bytes:
    """Strip PKCS#7 padding, checking every pad byte; raise DecryptError when it is malformed."""
    if not data or len(data) % 16:
        raise DecryptError("Decrypted data has an invalid length.")
    n = data[-1]
    if n < 1 or n > block_size or n > len(data):
        raise DecryptError("Invalid padding length.")
    if data[-n:] != bytes([n]) * n:
        raise DecryptError("Invalid padding bytes.")
    return data[:-n]


class WeComCrypto:
    """Sign, verify, encrypt and decrypt callback messages for one Token / EncodingAESKey / receive id."""

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str) -> None:
        self.token = token
        self.key = decode_aes_key(encoding_aes_key)
        self.receive_id = receive_id or ""

    def __repr__(self) -> str:
        return f"WeComCrypto(receive_id={self.receive_id!r})"

    # -- signatures ---------------------------------------------------------------------------------
    def sign(self, timestamp: str, nonce: str, payload: str) -> str:
        """Return the msg_signature for this Token."""
        return signature(self.token, timestamp, nonce, payload)

    def verify(self, msg_signature: str, timestamp: str, nonce: str, payload: str) -> None:
        """Raise SignatureError unless msg_signature matches, compared in constant time."""
        expected = self.sign(timestamp, nonce, payload)
        given = msg_signature if isinstance(msg_signature, str) else ""
        if not hmac.compare_digest(expected.encode("ascii"), given.strip().lower().encode("ascii", "replace")):
            raise SignatureError("Signature mismatch.")

    # -- cipher -------------------------------------------------------------------------------------
    def decrypt(self, encrypted: str) -> str:
        """Decrypt a base64 payload and return the message text, checking framing and receive id."""
        if not isinstance(encrypted, str) or not encrypted:
            raise DecryptError("Empty encrypted payload.")
        try:
            blob = base64.b64decode(encrypted.replace(" ", "+"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecryptError("Payload is not valid base64.") from exc
        if not blob or len(blob) % 16:
            raise DecryptError("Payload length is not a multiple of the AES block size.")
        cipher = AES.new(self.key, AES.MODE_CBC, iv=self.key[:16])
        plain = pkcs7_unpad(cipher.decrypt(blob))
        if len(plain) < 20:
            raise DecryptError("Decrypted payload is too short.")
        (length,) = struct.unpack(">I", plain[16:20])
        if length > len(plain) - 20:
            raise DecryptError("Declared message length exceeds the payload.")
        message = plain[20 : 20 + length]
        receive_id = plain[20 + length :]
        try:
            text = message.decode("utf-8")
            rid = receive_id.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecryptError("Decrypted message is not UTF-8.") from exc
        if not hmac.compare_digest(rid.encode("utf-8"), self.receive_id.encode("utf-8")):
            raise ReceiveIdError("Receive id mismatch.")
        return text

    def encrypt(self, message: str, *, random_prefix: bytes | None = None) -> str:
        """Encrypt a message for this receive id and return it base64-encoded."""
        prefix = random_prefix if random_prefix is not None else os.urandom(16)
        if len(prefix) != 16:
            raise EncryptError("The random prefix must be 16 bytes.")
        body = message.encode("utf-8")
        plain = prefix + struct.pack(">I", len(body)) + body + self.receive_id.encode("utf-8")
        cipher = AES.new(self.key, AES.MODE_CBC, iv=self.key[:16])
        return base64.b64encode(cipher.encrypt(pkcs7_pad(plain))).decode("ascii")

    # -- whole exchanges ----------------------------------------------------------------------------
    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """Check a URL-verification request and return the echostr plaintext to answer with."""
        echostr = (echostr or "").replace(" ", "+")
        self.verify(msg_signature, timestamp, nonce, echostr)
        return self.decrypt(echostr)

    def decrypt_message(self, msg_signature: str, timestamp: str, nonce: str, encrypted: str) -> str:
        """Verify and decrypt the <Encrypt> text of a POSTed callback; return the inner XML."""
        encrypted = (encrypted or "").replace(" ", "+")
        self.verify(msg_signature, timestamp, nonce, encrypted)
        return self.decrypt(encrypted)

    def encrypt_message(
        self,
        message: str,
        nonce: str,
        timestamp: str | int | None = None,
        *,
        random_prefix: bytes | None = None,
    ) -> dict[str, str]:
        """Encrypt and sign a message; return Encrypt, MsgSignature, TimeStamp and Nonce."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        encrypted = self.encrypt(message, random_prefix=random_prefix)
        return {
            "Encrypt": encrypted,
            "MsgSignature": self.sign(ts, nonce, encrypted),
            "TimeStamp": ts,
            "Nonce": str(nonce),
        }

    def encrypted_reply_xml(self, message: str, nonce: str, timestamp: str | int | None = None) -> str:
        """Return the passive-reply XML envelope for a message."""
        parts = self.encrypt_message(message, nonce, timestamp)
        return (
            f"<xml><Encrypt><![CDATA[{parts['Encrypt']}]]></Encrypt>"
            f"<MsgSignature><![CDATA[{parts['MsgSignature']}]]></MsgSignature>"
            f"<TimeStamp>{parts['TimeStamp']}</TimeStamp>"
            f"<Nonce><![CDATA[{parts['Nonce']}]]></Nonce></xml>"
        )

    def envelope_xml(self, message: str, nonce: str, timestamp: str | int | None = None,
                     agent_id: str | None = None) -> tuple[str, dict[str, str]]:
        """Return (POST body XML, query params) as WeCom sends a callback to a receiver."""
        parts = self.encrypt_message(message, nonce, timestamp)
        agent = f"<AgentID><![CDATA[{agent_id}]]></AgentID>" if agent_id is not None else ""
        body = (
            f"<xml><ToUserName><![CDATA[{self.receive_id}]]></ToUserName>"
            f"<Encrypt><![CDATA[{parts['Encrypt']}]]></Encrypt>{agent}</xml>"
        )
        params = {"msg_signature": parts["MsgSignature"], "timestamp": parts["TimeStamp"], "nonce": parts["Nonce"]}
        return body, params
