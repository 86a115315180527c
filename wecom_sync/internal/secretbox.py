"""Authenticated encryption of secrets at rest (AES-256-GCM, pycryptodome), with key rotation.

A stored value looks like ``wse1$<key id>$<base64(nonce | ciphertext | tag)>``. The key id (8 hex chars of
a hash of the key) lets a value be decrypted with whichever configured key wrote it; new values are always
written with the first (newest) key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from Crypto.Cipher import AES

from ..conf import app_settings, register_cache

PREFIX = "wse1"
_derived: dict = register_cache({})


class SecretDecryptionError(Exception):
    """A stored secret could not be decrypted with any configured key."""


def _derive(material: str) -> bytes:
    return hashlib.sha256(b"wecom_sync.secretbox.v1|" + material.encode("utf-8")).digest()


def keys() -> list[tuple[str, bytes]]:
    """Return the configured keys as (key id, 32-byte key), newest first."""
    cached = _derived.get("keys")
    if cached is not None:
        return cached
    from django.conf import settings

    materials = app_settings.ENCRYPTION_KEYS or [f"SECRET_KEY:{settings.SECRET_KEY}"]
    result = []
    for material in materials:
        key = _derive(material)
        result.append((hashlib.sha256(b"id|" + key).hexdigest()[:8], key))
    _derived["keys"] = result
    return result


def is_encrypted(value: str) -> bool:
    """Tell whether a stored value has the encrypted format."""
    return isinstance(value, str) and value.startswith(PREFIX + "$")


def encrypt(plaintext: str) -> str:
    """Encrypt a secret with the newest key."""
    key_id, key = keys()[0]
    nonce = os.urandom(12)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(key_id.encode("ascii"))
    ciphertext, tag = cipher.encrypt_and_digest(plaintext.encode("utf-8"))
    return f"{PREFIX}${key_id}${base64.b64encode(nonce + ciphertext + tag).decode('ascii')}"


def key_id_of(stored: str) -> str:
    """Return the key id that wrote a stored value ("" when it is not encrypted)."""
    return stored.split("$", 2)[1] if is_encrypted(stored) else ""


def decrypt(stored: str) -> str:
    """Decrypt a stored value with whichever configured key wrote it."""
    try:
        _, key_id, blob_b64 = stored.split("$", 2)
        blob = base64.b64decode(blob_b64, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise SecretDecryptionError("Stored secret is malformed.") from exc
    if len(blob) < 12 + 16:
        raise SecretDecryptionError("Stored secret is truncated.")
    for kid, key in keys():
        if kid != key_id:
            continue
        cipher = AES.new(key, AES.MODE_GCM, nonce=blob[:12])
        cipher.update(kid.encode("ascii"))
        try:
            return cipher.decrypt_and_verify(blob[12:-16], blob[-16:]).decode("utf-8")
        except ValueError as exc:
            raise SecretDecryptionError("Stored secret failed authentication.") from exc
    raise SecretDecryptionError(
        f"No configured encryption key has id {key_id}; add the old key to WECOM_SYNC['ENCRYPTION_KEYS']."
    )
