"""Model fields of wecom_sync."""

from __future__ import annotations

from typing import Any

from django.db import models

from .internal import secretbox


class EncryptedTextField(models.TextField):
    """A text field stored encrypted (AES-GCM) and exposed as plaintext in Python.

    The empty string is stored as the empty string, so "not set" stays visible in the database without
    revealing anything else.
    """

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> str:
        if value is None or value == "":
            return value
        return secretbox.decrypt(value) if secretbox.is_encrypted(value) else value

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and secretbox.is_encrypted(value):
            return secretbox.decrypt(value)
        return value

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return secretbox.encrypt(str(value))
