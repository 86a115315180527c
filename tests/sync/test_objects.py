"""The entry points the event inbox calls (wecom_sync.sync.objects), with hand-built objects."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from tests.factories import remote_department as dept
from tests.factories import remote_member as member
from wecom_sync.models import (
    ExternalDepartment,
    ExternalUser,
)
from wecom_sync.sync import objects

User = get_user_model()


ROOT = dept(1, parent=0, name="Root")


def ext(source, userid):
    return ExternalUser.objects.select_related("user").get(source=source, userid_key=userid.lower())


def test_apply_remote_objects_creates_updates_and_is_idempotent(source, run):
    counters = objects.apply_remote_objects(source, run, departments=[ROOT, dept(2)], users=[member("amy", (2,))])
    assert counters == {"departments_created": 2, "users_created": 1}
    amy = ext(source, "amy")
    assert amy.user.username == "amy" and amy.user.first_name == "Amy" and amy.user.last_name == "Person"
    assert ExternalDepartment.objects.get(source=source, department_id=2).parent.department_id == 1
    assert list(amy.memberships.values_list("department__department_id", "is_main")) == [(2, True)]
    assert objects.apply_remote_objects(source, run, departments=[ROOT, dept(2)], users=[member("amy", (2,))]) == {}
    counters = objects.apply_remote_objects(source, run, users=[member("AMY", (1, 2), name="Amy Li")])
    assert counters == {"users_updated": 1}
    amy = ext(source, "amy")
    assert amy.userid == "AMY" and amy.user.username == "amy"  # the username is frozen once assigned
    assert amy.user.last_name == "Li"
    assert sorted(amy.memberships.values_list("department__department_id", flat=True)) == [1, 2]
    change = run.changes.filter(action="updated").get()
    assert change.fields["name"] == ["Amy Person", "Amy Li"] and change.fields["memberships"]["added"] == [1]


def test_apply_remote_objects_never_removes_anything_else(source, run):
    objects.apply_remote_objects(source, run, departments=[ROOT], users=[member("a"), member("b")])
    objects.apply_remote_objects(source, run, users=[member("c")])
    assert ExternalUser.objects.filter(source=source, is_removed=False).count() == 3
    assert User.objects.filter(is_active=True).count() == 3


@pytest.mark.parametrize(
    ("policy", "action", "active", "exists"),
    [("deactivate", "deactivated", False, True), ("delete", "deleted", None, False), ("ignore", "removed", True, True)],
)
def test_remove_users_applies_the_policy(source, run, policy, action, active, exists):
    source.removal_policy = policy
    source.save()
    objects.apply_remote_objects(source, run, departments=[ROOT], users=[member("gone"), member("stay")])
    user_pk = ext(source, "gone").user_id
    counters = objects.remove_users(source, run, ["GONE"])
    assert counters == {f"users_{action}": 1}
    gone = ExternalUser.objects.get(source=source, userid_key="gone")
    assert gone.is_removed and gone.removed_at is not None
    assert not gone.memberships.exists()
    assert User.objects.filter(pk=user_pk).exists() is exists
    if exists:
        assert User.objects.get(pk=user_pk).is_active is active
    assert ext(source, "stay").user.is_active
    # reappearing reactivates (a deleted account is provisioned again)
    assert objects.apply_remote_objects(source, run, users=[member("gone")]) == {"users_reactivated": 1}
    gone = ext(source, "gone")
    assert not gone.is_removed and gone.user.is_active and gone.memberships.count() == 1
    if exists:
        assert gone.user_id == user_pk


def test_superuser_is_never_deactivated(source, run):
    objects.apply_remote_objects(source, run, departments=[ROOT], users=[member("root")])
    user = ext(source, "root").user
    User.objects.filter(pk=user.pk).update(is_superuser=True)
    objects.apply_remote_objects(source, run, users=[member("root", status=5)])
    assert objects.remove_users(source, run, ["root"]) == {"users_skipped": 1}
    user.refresh_from_db()
    assert user.is_active


def test_remove_departments_keeps_users(source, run):
    objects.apply_remote_objects(source, run, departments=[ROOT, dept(2)], users=[member("u", (1, 2))])
    assert objects.remove_departments(source, run, [2]) == {"departments_removed": 1}
    assert ExternalDepartment.objects.get(source=source, department_id=2).is_removed
    u = ext(source, "u")
    assert not u.is_removed and u.user.is_active
    assert list(u.memberships.values_list("department__department_id", flat=True)) == [1]


def test_rename_user_rekeys_the_same_django_user(source, run):
    objects.apply_remote_objects(source, run, departments=[ROOT], users=[member("old"), member("taken")])
    user_pk = ext(source, "old").user_id
    assert objects.rename_user(source, run, "old", "New") is True
    renamed = ext(source, "new")
    assert renamed.user_id == user_pk and renamed.userid == "New" and renamed.user.username == "old"
    assert not ExternalUser.objects.filter(source=source, userid_key="old").exists()
    assert objects.rename_user(source, run, "new", "taken") is False
    assert run.changes.filter(action="failed", external_id="taken").exists()
    assert objects.rename_user(source, run, "nobody", "x") is False
    # the payload of the renamed member then updates, not creates
    assert objects.apply_remote_objects(source, run, users=[member("New")]) == {"users_updated": 1}


