"""Re-encrypt every stored WeCom secret with the newest key of WECOM_SYNC['ENCRYPTION_KEYS']."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.translation import gettext as _

from ...internal import secretbox
from ...internal.secretbox import SecretDecryptionError
from ...models import SyncSource

FIELDS = ("secret", "contact_sync_secret", "token", "encoding_aes_key")


class Command(BaseCommand):
    help = _("Re-encrypt the stored WeCom secrets with the newest encryption key (key rotation).")

    def handle(self, *args: Any, **options: Any) -> None:
        newest = secretbox.keys()[0][0]
        count = 0
        with transaction.atomic():
            for source in SyncSource.objects.select_for_update().order_by("pk"):
                try:
                    values = {name: getattr(source, name) for name in FIELDS}
                except SecretDecryptionError as exc:
                    raise CommandError(
                        _("Source %(slug)s cannot be decrypted: %(error)s") % {"slug": source.slug, "error": exc}
                    ) from exc
                # Saving re-encrypts with the newest key; update_fields keeps other columns untouched.
                for name, value in values.items():
                    setattr(source, name, value)
                source.save(update_fields=list(FIELDS))
                count += 1
        self.stdout.write(
            _("Re-encrypted the secrets of %(count)d source(s) with key %(key)s.") % {"count": count, "key": newest}
        )
