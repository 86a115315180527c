"""Authenticated encryption of secrets at rest (AES-256-GCM, pycryptodome), with key rotation.

A stored value looks like ``wse2$<key id>$<base64(nonce | ciphertext | tag)>``. The key id (8 hex chars of
a hash of the key) lets a value be decrypted with whichever configured key wrote it; new values are always
written with the first (newest) key. The associated data binds a ``wse2`` value to its place (a context such
as ``wecom_sync.syncsource:12:secret``): copied to another row or field, it no longer decrypts.

``wse1`` values (written before the binding existed) carry only the key id as associated data; they still
decrypt, and ``manage.py wecom_sync_rotate_keys`` rewrites them as ``wse2``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from Crypto.Cipher import AES

from ..conf import app_settings, register_cache

PREFIX = "wse2"
LEGACY_PREFIX = "wse1"
_derived: dict = register_cache({})


class SecretDecryptionError(Exception):
    """A stored secret could not be decrypted with any configured key."""


def _derive(material: str) -> bytes:
    return hashlib.sha256(b"wecom_sync.secretbox.v1|" + material.encode("utf-8")).digest()


def keys() -> list[tuple[str, bytes]]:
    """Return the configured keys as (key id, 32-byte key), newest first.

    Without ``ENCRYPTION_KEYS`` the keys derive from ``SECRET_KEY`` then each of ``SECRET_KEY_FALLBACKS``,
    so rotating ``SECRET_KEY`` the documented Django way keeps the stored secrets readable.
    """
    cached = _derived.get("keys")
    if cached is not None:
        return cached
    from django.conf import settings

    materials = app_settings.ENCRYPTION_KEYS or [
        f"SECRET_KEY:{key}" for key in [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])] if key
    ]
    result = []
    for material in materials:
        key = _derive(material)
        result.append((hashlib.sha256(b"id|" + key).hexdigest()[:8], key))
    _derived["keys"] = result
    return result


def is_encrypted(value: object) -> bool:
    """Tell whether a stored value has an encrypted format (current or legacy)."""
    return isinstance(value, str) and (value.startswith(PREFIX + "$") or value.startswith(LEGACY_PREFIX + "$"))


def _aad(prefix: str, key_id: str, context: str) -> bytes:
    if prefix == LEGACY_PREFIX:
        return key_id.encode("ascii")
    return f"{prefix}|{key_id}|{context}".encode()


def encrypt(plaintext: str, context: str | None = None) -> str:
    """Encrypt a secret with the newest key, bound to ``context`` (its row and field); None: unbound (wse1)."""
    key_id, key = keys()[0]
    prefix = LEGACY_PREFIX if context is None else PREFIX
    nonce = os.urandom(12)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(_aad(prefix, key_id, context or ""))
    ciphertext, tag = cipher.encrypt_and_digest(plaintext.encode("utf-8"))
    return f"{prefix}${key_id}${base64.b64encode(nonce + ciphertext + tag).decode('ascii')}"


def key_id_of(stored: str) -> str:
    """Return the key id that wrote a stored value ("" when it is not encrypted)."""
    return stored.split("$", 2)[1] if is_encrypted(stored) else ""


def is_current(stored: str) -> bool:
    """Whether a stored value is written with the newest key in the current format (rotation not needed)."""
    return not is_encrypted(stored) or (stored.startswith(PREFIX + "$") and key_id_of(stored) == keys()[0][0])


def decrypt(stored: str, context: str = "") -> str:
    """Decrypt a stored value with whichever configured key wrote it; ``context`` must be the one it was bound to."""
    try:
        prefix, key_id, blob_b64 = stored.split("$", 2)
        blob = base64.b64decode(blob_b64, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise SecretDecryptionError("Stored secret is malformed.") from exc
    if prefix not in (PREFIX, LEGACY_PREFIX):
        raise SecretDecryptionError("Stored secret has an unknown format.")
    if len(blob) < 12 + 16:
        raise SecretDecryptionError("Stored secret is truncated.")
    for kid, key in keys():
        if kid != key_id:
            continue
        cipher = AES.new(key, AES.MODE_GCM, nonce=blob[:12])
        cipher.update(_aad(prefix, kid, context))
        try:
            return cipher.decrypt_and_verify(blob[12:-16], blob[-16:]).decode("utf-8")
        except ValueError as exc:
            raise SecretDecryptionError("Stored secret failed authentication (wrong key or moved value).") from exc
    raise SecretDecryptionError(
        f"No configured encryption key has id {key_id}; add the old key to WECOM_SYNC['ENCRYPTION_KEYS']."
    )
