"""Migrations stay in step with the models and have unique numbers."""

import io
from collections import Counter
from pathlib import Path

import pytest
from django.core.management import call_command

import wecom_sync


@pytest.mark.django_db
def test_no_missing_migrations():
    out = io.StringIO()
    call_command("makemigrations", "wecom_sync", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def test_no_duplicate_migration_numbers():
    folder = Path(wecom_sync.__file__).parent / "migrations"
    numbers = Counter(p.name[:4] for p in folder.glob("[0-9][0-9][0-9][0-9]_*.py"))
    assert numbers, "no migrations found"
    assert [n for n, c in numbers.items() if c > 1] == []


@pytest.mark.django_db(transaction=True)
def test_0003_marks_existing_mappings_honestly():
    """An account that joined long before its mapping, or that a run reported as linked, becomes "linked"."""
    from datetime import timedelta

    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor
    from django.utils import timezone

    executor = MigrationExecutor(connection)
    before = [("wecom_sync", "0002_origin_tags_login_rejected")]
    after = [("wecom_sync", "0003_mark_existing_account_origin")]
    latest = executor.loader.graph.leaf_nodes("wecom_sync")
    executor.migrate(before)
    try:
        apps = executor.loader.project_state(before).apps
        User = apps.get_model("auth", "User")  # noqa: N806
        Source = apps.get_model("wecom_sync", "SyncSource")  # noqa: N806
        ExternalUser = apps.get_model("wecom_sync", "ExternalUser")  # noqa: N806
        Run = apps.get_model("wecom_sync", "SyncRun")  # noqa: N806
        Change = apps.get_model("wecom_sync", "SyncRunChange")  # noqa: N806
        now = timezone.now()
        source = Source.objects.create(name="m", slug="m", corp_id="wwmigration000001")
        old = User.objects.create(username="old", date_joined=now - timedelta(days=30))
        new = User.objects.create(username="new", date_joined=now)
        reported = User.objects.create(username="reported", date_joined=now)
        rows = {
            "old": ExternalUser.objects.create(source=source, userid="old", userid_key="old", user=old),
            "new": ExternalUser.objects.create(source=source, userid="new", userid_key="new", user=new),
            "reported": ExternalUser.objects.create(source=source, userid="Rep", userid_key="rep", user=reported),
        }
        run = Run.objects.create(source=source)
        Change.objects.create(run=run, object_type="user", external_id="Rep", action="created",
                              fields={"linked": [None, "reported"]})
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        apps = executor.loader.project_state(after).apps
        origins = dict(apps.get_model("wecom_sync", "ExternalUser").objects.values_list("userid_key",
                                                                                         "account_origin"))
        assert origins == {"old": "linked", "new": "created", "rep": "linked"}
        assert rows
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(latest)
