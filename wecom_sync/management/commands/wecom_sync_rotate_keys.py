"""Re-encrypt every stored WeCom secret with the newest key of WECOM_SYNC['ENCRYPTION_KEYS']."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.translation import gettext as _

from ...internal import secretbox
from ...internal.secretbox import SecretDecryptionError
from ...models import SyncSource

FIELDS = SyncSource.SECRET_FIELDS


class Command(BaseCommand):
    help = _("Re-encrypt the stored WeCom secrets with the newest encryption key (key rotation).")

    def handle(self, *args: Any, **options: Any) -> None:
        newest = secretbox.keys()[0][0]
        done, failed = 0, []
        for pk in SyncSource.objects.order_by("pk").values_list("pk", flat=True):
            # One transaction per source: a source whose secrets cannot be read does not stop the others.
            with transaction.atomic():
                source = SyncSource.objects.select_for_update().filter(pk=pk).first()
                if source is None:
                    continue
                try:
                    values = {name: getattr(source, name) for name in FIELDS}
                except SecretDecryptionError:
                    failed.append(source.slug)
                    self.stderr.write(
                        _("%(slug)s: stored secrets cannot be decrypted with the configured keys: enter them "
                          "again") % {"slug": source.slug}
                    )
                    continue
                # Setting the plaintext makes the save re-encrypt with the newest key, bound to row and field.
                for name, value in values.items():
                    setattr(source, name, value)
                source.save(update_fields=list(FIELDS))
                done += 1
                self.stdout.write(_("%(slug)s: re-encrypted with key %(key)s.") % {"slug": source.slug,
                                                                                  "key": newest})
        self.stdout.write(
            _("Re-encrypted the secrets of %(count)d source(s) with key %(key)s.") % {"count": done, "key": newest}
        )
        if failed:
            raise CommandError(
                _("%(count)d source(s) could not be re-encrypted: %(slugs)s. Add the old key to "
                  "WECOM_SYNC['ENCRYPTION_KEYS'] or enter their secrets again in the admin.")
                % {"count": len(failed), "slugs": ", ".join(failed)}
            )
