"""Model fields of wecom_sync."""

from __future__ import annotations

from typing import Any, cast

from django.db import models
from django.db.models.query_utils import DeferredAttribute

from .internal import secretbox

#: Set on an instance while a raw save (loaddata) writes it: the stored ciphertext is written back as it is.
RAW_SAVING = "_wecom_sync_raw_saving"


class Sealed(str):
    """A stored ciphertext, as read from the database or a fixture: decrypted only when the attribute is read."""

    __slots__ = ()


class _EncryptedAttribute(DeferredAttribute):
    """Attribute access decrypts lazily, so a row whose secrets cannot be decrypted still loads and lists."""

    def __get__(self, instance: Any, cls: Any = None) -> Any:
        value = super().__get__(instance, cls)
        if instance is not None and isinstance(value, Sealed) and not instance.__dict__.get(RAW_SAVING):
            return cast("EncryptedTextField", self.field).open(instance, value)
        return value

    def __set__(self, instance: Any, value: Any) -> None:
        # A data descriptor, so that reads always come through __get__ even once the value is in __dict__.
        instance.__dict__[self.field.attname] = value


class EncryptedTextField(models.TextField):
    """A text field stored encrypted (AES-GCM) and exposed as plaintext in Python.

    The ciphertext is bound to its row and field (associated data ``<app.model>:<pk>:<field>``), so a value
    copied elsewhere does not decrypt. Reading the attribute decrypts (raising ``SecretDecryptionError`` when
    the configured keys cannot); loading the row does not. Serialization (``dumpdata``) carries the
    ciphertext, and deserialization (``loaddata``) keeps it as it is. The empty string is stored as the empty
    string, so "not set" stays visible in the database without revealing anything else.
    """

    descriptor_class = _EncryptedAttribute

    def context(self, instance: Any) -> str:
        """The associated data that binds a ciphertext to this field of this row."""
        return f"{instance._meta.label_lower}:{instance.pk}:{self.attname}"

    def open(self, instance: Any, stored: str) -> str:
        """Decrypt a stored value of this field of ``instance``."""
        return secretbox.decrypt(stored, self.context(instance))

    def sealed_value(self, instance: Any) -> str | None:
        """The stored form of this field of ``instance`` (ciphertext or empty), without decrypting it."""
        value = instance.__dict__.get(self.attname)
        if value is None or value == "" or isinstance(value, Sealed):
            return value
        if secretbox.is_encrypted(value):
            return Sealed(value)
        if instance.pk is None:
            return None  # not bound yet: the model saves the row first (SyncSource.save)
        return Sealed(secretbox.encrypt(str(value), self.context(instance)))

    def is_set(self, instance: Any) -> bool:
        """Whether a value is stored (or about to be) in this field of ``instance``, without decrypting it."""
        if self.attname not in instance.__dict__ and instance.pk is not None:
            instance.refresh_from_db(fields=[self.attname])  # deferred: load the stored form, still sealed
        return bool(instance.__dict__.get(self.attname))

    def is_readable(self, instance: Any) -> bool:
        """Whether the stored value decrypts with the configured keys (True when empty or plaintext)."""
        value = instance.__dict__.get(self.attname)
        if not isinstance(value, Sealed):
            return True
        try:
            self.open(instance, value)
        except secretbox.SecretDecryptionError:
            return False
        return True

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if isinstance(value, str) and secretbox.is_encrypted(value):
            return Sealed(value)
        return value

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and not isinstance(value, Sealed) and secretbox.is_encrypted(value):
            return Sealed(value)
        return value

    def pre_save(self, model_instance: Any, add: bool) -> Any:
        value = model_instance.__dict__.get(self.attname)
        if value is None or value == "" or isinstance(value, Sealed) or model_instance.pk is None:
            return value
        sealed = self.sealed_value(model_instance)
        # Keep the ciphertext on the instance: saving again rewrites nothing, and plaintext is not kept around.
        model_instance.__dict__[self.attname] = sealed
        return sealed

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None or value == "" or secretbox.is_encrypted(value):
            return None if value is None else str(value)
        # Plaintext reaching the database without a row to bind to (queryset.update, raw fixtures): encrypt
        # it unbound rather than store it in clear; the rotation command binds it later.
        return secretbox.encrypt(str(value))

    def value_from_object(self, obj: Any) -> Any:
        """Forms start from an empty value: the plaintext is never a form's initial data."""
        return ""

    def value_to_string(self, obj: Any) -> str:
        """Serialize the ciphertext, never the plaintext."""
        sealed = self.sealed_value(obj)
        return "" if sealed is None else str(sealed)
