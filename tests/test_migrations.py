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
