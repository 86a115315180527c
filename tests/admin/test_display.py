"""wecom_sync.admin.display: the department tree, badges and run messages, built without a request."""

from __future__ import annotations

import pytest

from tests.factories import make_source
from wecom_sync.admin.display import (
    TREE_INDENT,
    badge,
    department_tree,
    department_trees,
    not_started_message,
    started_message,
    tree_order,
)
from wecom_sync.models import ExternalDepartment, SyncRun


def row(pk: int, parent: int | None, order: int = 0, department_id: int | None = None) -> dict:
    return {"id": pk, "parent_id": parent, "name": f"d{pk}", "department_id": department_id or pk, "order": order,
            "member_count": 0}


def test_tree_order_is_depth_first_siblings_by_order_then_id():
    rows = [row(1, None), row(2, 1, order=5), row(3, 1, order=9), row(4, 2), row(5, 1, order=5, department_id=1)]
    assert [(depth, r["id"]) for depth, r in tree_order(rows)] == [(0, 1), (1, 3), (1, 5), (1, 2), (2, 4)]


def test_tree_order_shows_a_row_whose_parent_is_missing_at_the_top():
    rows = [row(7, 99), row(8, 7), row(1, None, order=1)]
    assert [(depth, r["id"]) for depth, r in tree_order(rows)] == [(0, 1), (0, 7), (1, 8)]
    assert tree_order([]) == []


@pytest.mark.django_db
def test_department_tree_lists_live_departments_with_indent():
    source = make_source()
    root = ExternalDepartment.objects.create(source=source, department_id=1, name="Root")
    child = ExternalDepartment.objects.create(source=source, department_id=2, name="Child", parent=root)
    ExternalDepartment.objects.create(source=source, department_id=3, name="Gone", parent=root, is_removed=True)
    ExternalDepartment.objects.create(source=source, department_id=4, name="Grandchild", parent=child)
    tree = department_tree(source)
    assert [(d["name"], d["indent"], d["member_count"]) for d in tree] == [
        ("Root", 0, 0), ("Child", TREE_INDENT, 0), ("Grandchild", 2 * TREE_INDENT, 0)]
    other = make_source(slug="other", name="Other")
    assert department_trees() == [(source, tree), (other, [])]


@pytest.mark.django_db
def test_run_messages_and_badge():
    source = make_source()
    dry = SyncRun.objects.create(source=source, kind=SyncRun.Kind.DRY_RUN)
    full = SyncRun.objects.create(source=source, kind=SyncRun.Kind.FULL, message="No worker answered.")
    assert started_message(dry) == f"Started a dry run (run #{dry.pk})."
    assert started_message(full) == f"Started a sync (run #{full.pk})."
    assert not_started_message(full) == f"{source.name}: the sync was not started. No worker answered."
    assert 'wecom-status-failed" style="background:#dc3545' in badge("failed", "<b>failed</b>")
    assert "&lt;b&gt;failed&lt;/b&gt;" in badge("failed", "<b>failed</b>")
