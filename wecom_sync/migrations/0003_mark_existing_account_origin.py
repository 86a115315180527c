"""Mark existing mappings honestly: an account that existed before the sync mapped it was linked, not created.

Before this migration the sync did not record how an account came to be mapped. A mapping counts as
``linked`` when a run's change row says the sync linked it, or when the account joined the site well before
the mapping was made (the sync creates an account and its mapping in the same batch, seconds apart). A user
model without ``date_joined`` cannot tell, and is marked ``linked``: the sync then owns less, never more.
"""

from datetime import timedelta

from django.conf import settings
from django.db import migrations

# The sync creates an account and its mapping in one batch; anything older than this was there before.
SAME_BATCH = timedelta(minutes=5)


def mark_origin(apps, schema_editor):  # noqa: ANN001, ANN201
    ExternalUser = apps.get_model("wecom_sync", "ExternalUser")
    SyncRunChange = apps.get_model("wecom_sync", "SyncRunChange")
    app_label, model_name = settings.AUTH_USER_MODEL.split(".")
    user_model = apps.get_model(app_label, model_name)
    has_joined = any(field.name == "date_joined" for field in user_model._meta.get_fields())

    linked_keys = set()
    for source_id, external_id, fields in SyncRunChange.objects.filter(
        object_type="user", action__in=["created", "updated", "reactivated"]
    ).values_list("run__source_id", "external_id", "fields").iterator(chunk_size=2000):
        if isinstance(fields, dict) and "linked" in fields:
            linked_keys.add((source_id, external_id.lower()))

    mapped = ExternalUser.objects.filter(user__isnull=False)
    linked_pks = []
    for row in mapped.values("pk", "source_id", "userid_key", "created_at", "user_id").iterator(chunk_size=2000):
        linked = (row["source_id"], row["userid_key"]) in linked_keys
        if not linked and not has_joined:
            linked = True
        if linked:
            linked_pks.append(row["pk"])
    if has_joined:
        for row in mapped.values("pk", "created_at", "user__date_joined").iterator(chunk_size=2000):
            joined = row["user__date_joined"]
            if joined is not None and row["created_at"] is not None and joined < row["created_at"] - SAME_BATCH:
                linked_pks.append(row["pk"])
    for start in range(0, len(linked_pks), 1000):
        ExternalUser.objects.filter(pk__in=linked_pks[start:start + 1000]).update(account_origin="linked")


class Migration(migrations.Migration):

    dependencies = [
        ("wecom_sync", "0002_origin_tags_login_rejected"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(mark_origin, migrations.RunPython.noop)]
