"""Tests of the pure diff (wecom_sync.sync.plan): no database, no HTTP."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.factories import remote_department, remote_member
from wecom_sync.sync.plan import (
    LocalDepartment,
    LocalState,
    LocalUser,
    as_rows,
    build_full_plan,
    build_plan,
    default_is_active,
    detect_renames,
    diff_fields,
    exceeds_threshold,
    local_parent_for,
    refine_user_action,
)


def dept(id, parent=1, name=None, order=0, leaders=()):  # noqa: A002
    return remote_department(id, parent, name=name or f"D{id}", order=order, leaders=leaders)


def user(userid, departments=(1,), status=1, name=None, email="", main=None, orders=None, leaders=None, **extra):
    return remote_member(userid, departments, status=status, name=name or userid.title(), main=main, orders=orders,
                         leaders=leaders, email=email, **extra)


def mirror(departments, users, *, removed_users=(), removed_depts=()):
    """The LocalState that a perfect sync of these remote objects leaves behind."""
    state = LocalState()
    universe = {d.id for d in departments}
    root = 1 if 1 in universe else None
    for i, d in enumerate(departments):
        parent = local_parent_for(d, root, universe)
        state.departments[d.id] = LocalDepartment(
            i + 1, d.id, parent, d.parent_id, d.name, d.name_en, d.order, d.leaders, d.digest, d.id in removed_depts
        )
    for i, u in enumerate(users):
        state.users[u.key] = LocalUser(i + 1, u.userid, u.key, u.digest, u.status, u.key in removed_users, i + 100)
        state.memberships[u.key] = as_rows(
            {d: (o, lead, main) for d, o, lead, main in u.memberships() if d in universe}
        )
    return state


def plan_of(departments, users, local, *, full=True, complete=True):
    return build_plan(
        {d.id: d for d in departments}, {u.key: u for u in users}, local, root_id=1, full=full, complete=complete
    )


DEPTS = [dept(1, parent=0, name="Root"), dept(2), dept(3, parent=2), dept(4, parent=2)]
USERS = [user("alice", (2,)), user("bob", (3, 4), main=4), user("carol", (1,), status=4)]


def test_identical_directory_gives_an_empty_plan():
    plan = plan_of(DEPTS, USERS, mirror(DEPTS, USERS))
    assert plan.is_empty
    assert plan.unchanged_users == 3 and plan.unchanged_departments == 4


def test_first_sync_creates_everything_parents_first():
    plan = plan_of(list(reversed(DEPTS)), USERS, LocalState())
    assert [op.department_id for op in plan.department_ops] == [1, 2, 3, 4]
    assert all(op.action == "created" for op in plan.department_ops)
    assert {op.department_id: op.parent_id for op in plan.department_ops} == {1: None, 2: 1, 3: 2, 4: 2}
    assert sorted(op.key for op in plan.user_creates) == ["alice", "bob", "carol"]
    bob = next(op for op in plan.user_ops if op.key == "bob")
    assert bob.memberships == {3: (0, False, False), 4: (0, False, True)}


def test_department_rename_move_reorder_and_removal():
    local = mirror(DEPTS, USERS)
    remote = [DEPTS[0], dept(2, name="Renamed"), dept(3, parent=1), dept(5, parent=2)]
    users = [user("alice", (2,)), user("bob", (3,)), USERS[2]]
    plan = plan_of(remote, users, local)
    ops = {op.department_id: op for op in plan.department_ops}
    assert ops[2].action == "updated" and ops[2].fields["name"] == ["D2", "Renamed"]
    assert ops[3].action == "moved" and ops[3].fields["parent"] == [2, 1]
    assert ops[5].action == "created"
    assert [d.department_id for d in plan.department_removals] == [4]
    reorder = plan_of([DEPTS[0], dept(2, order=9), DEPTS[2], DEPTS[3]], USERS, local)
    assert [(op.department_id, op.action, op.fields) for op in reorder.department_ops] == [
        (2, "updated", {"order": [0, 9]})
    ]


def test_department_with_parent_outside_scope_hangs_under_root_and_is_reattached():
    remote = [DEPTS[0], dept(7, parent=99)]
    plan = plan_of(remote, [], LocalState())
    assert {op.department_id: op.parent_id for op in plan.department_ops} == {1: None, 7: 1}
    local = mirror(remote, [])
    assert plan_of(remote, [], local).is_empty
    back = [DEPTS[0], dept(99, parent=1), dept(7, parent=99)]
    plan = plan_of(back, [], local)
    ops = {op.department_id: op for op in plan.department_ops}
    assert ops[99].action == "created"
    assert ops[7].action == "moved" and ops[7].parent_id == 99


def test_user_changes_are_classified():
    local = mirror(DEPTS, USERS)
    remote = [
        user("alice", (2,), name="Alice Renamed"),
        user("bob", (3, 4), main=3),
        user("carol", (1,), status=2),
    ]
    plan = plan_of(DEPTS, remote, local)
    ops = {op.key: op for op in plan.user_ops}
    assert ops["alice"].action == "updated" and ops["alice"].content_changed
    assert not ops["alice"].memberships_changed
    assert ops["bob"].action == "updated" and ops["bob"].changed == (3, 4)
    assert ops["carol"].action == "deactivated"
    back = plan_of(DEPTS, [USERS[0], USERS[1], user("carol", (1,), status=1)],
                   mirror(DEPTS, [USERS[0], USERS[1], user("carol", (1,), status=5)]))
    assert [op.action for op in back.user_ops] == ["reactivated"]


def test_membership_only_change_is_a_move_and_removed_user_coming_back_is_reactivated():
    local = mirror(DEPTS, USERS)
    local.memberships["alice"] = ((3, 0, False, True),)  # local rows drifted; the payload did not
    plan = plan_of(DEPTS, USERS, local)
    [op] = plan.user_ops
    assert op.action == "moved" and op.added == (2,) and op.removed == (3,) and not op.content_changed
    local = mirror(DEPTS, USERS, removed_users={"bob"})
    [op] = plan_of(DEPTS, USERS, local).user_ops
    assert op.key == "bob" and op.action == "reactivated"


def test_userids_are_case_insensitive():
    local = mirror(DEPTS, USERS)
    plan = plan_of(DEPTS, [user("ALICE", (2,)), USERS[1], USERS[2]], local)
    [op] = plan.user_ops
    assert op.key == "alice" and op.local is not None and op.action == "updated"
    assert not plan.user_removals


def test_removals_only_from_a_complete_full_snapshot():
    local = mirror(DEPTS, USERS)
    remote_users = USERS[:1]
    assert [u.key for u in plan_of(DEPTS[:2], remote_users, local).user_removals] == ["bob", "carol"]
    partial = plan_of(DEPTS[:2], remote_users, local, complete=False)
    assert not partial.user_removals and not partial.department_removals and not partial.removals_allowed
    events = plan_of([], [user("alice", (3,))], local, full=False, complete=False)
    assert not events.user_removals and not events.department_removals
    [op] = events.user_ops
    assert op.action == "updated" and op.memberships == {3: (0, False, True)}  # 3 is known locally


def test_incomplete_snapshot_keeps_memberships_of_departments_it_missed():
    local = mirror(DEPTS, USERS)
    plan = plan_of([DEPTS[0], DEPTS[1]], USERS, local, complete=False)
    assert not any(op.key == "bob" for op in plan.user_ops)


def test_threshold():
    assert not exceeds_threshold(0, 10, count=0, percent=0)
    assert exceeds_threshold(51, 10_000, count=50, percent=20)
    assert not exceeds_threshold(50, 10_000, count=50, percent=20)
    assert exceeds_threshold(3, 10, count=50, percent=20)
    assert not exceeds_threshold(2, 10, count=50, percent=20)


def test_diff_fields_and_refine_action():
    assert diff_fields({"a": 1, "b": [1], "errcode": 0}, {"a": 1, "b": [2], "c": "x"}) == {
        "b": [[1], [2]], "c": [None, "x"]
    }
    assert refine_user_action("updated", {"department": [[1], [2]], "order": [[0], [0, 1]]}) == "moved"
    assert refine_user_action("updated", {"order": [[0], [5]]}) == "updated"
    assert refine_user_action("updated", {"name": ["a", "b"], "department": [[1], [2]]}) == "updated"
    assert refine_user_action("deactivated", {"department": [[1], [2]]}) == "deactivated"


def test_default_is_active():
    assert [default_is_active(s) for s in (1, 2, 4, 5)] == [True, False, True, False]


def test_rename_detected_by_name_and_contact():
    old = user("zhangsan", (2,), name="张三", email="zs@example.com")
    local = mirror(DEPTS, [old, USERS[1]])
    new = user("zhang.san", (2,), name="张三", email="ZS@example.com ")
    plan = plan_of(DEPTS, [new, USERS[1]], local)
    contacts = {"zhangsan": {"name": "张三", "email": "zs@example.com"}}
    assert detect_renames(plan, contacts, local) == 1
    [op] = plan.user_ops
    assert op.renamed_from == "zhangsan" and op.local.key == "zhangsan" and op.action == "updated"
    assert not plan.user_removals


def test_rename_not_guessed_when_ambiguous_or_different_person():
    a = user("a1", (2,), name="Li Lei", email="ll@example.com")
    b = user("a2", (2,), name="Li Lei", email="ll@example.com")
    local = mirror(DEPTS, [a, b])
    plan = plan_of(DEPTS, [user("a3", (2,), name="Li Lei", email="ll@example.com")], local)
    same = {"name": "Li Lei", "email": "ll@example.com"}
    contacts = {"a1": same, "a2": same}
    assert detect_renames(plan, contacts, local) == 0
    assert len(plan.user_removals) == 2
    local = mirror(DEPTS, [a])
    plan = plan_of(DEPTS, [user("x", (2,), name="Han Meimei", email="ll@example.com")], local)
    assert detect_renames(plan, {"a1": {"name": "Li Lei", "email": "ll@example.com"}}, local) == 0
    plan = plan_of(DEPTS, [user("y", (2,), name="Li Lei")], local)
    assert detect_renames(plan, {"a1": {"name": "Li Lei", "email": ""}}, local) == 0  # no shared contact


@st.composite
def directories(draw):
    n_depts = draw(st.integers(1, 8))
    depts = [dept(1, parent=0)]
    for i in range(2, n_depts + 1):
        depts.append(dept(i, parent=draw(st.integers(1, i - 1)), order=draw(st.integers(0, 3))))
    users = []
    for i in range(draw(st.integers(0, 12))):
        ds = draw(st.lists(st.integers(1, n_depts), min_size=1, max_size=3, unique=True))
        users.append(user(f"u{i}", tuple(ds), status=draw(st.sampled_from([1, 2, 4, 5])),
                          leaders=[draw(st.integers(0, 1)) for _ in ds]))
    return depts, users


@settings(max_examples=60, deadline=None)
@given(directories(), directories())
def test_plan_is_empty_once_applied(before, after):
    """Diffing a directory against its own mirror is empty; against another, every difference is planned."""
    depts, users = after
    assert plan_of(depts, users, mirror(depts, users)).is_empty
    plan = plan_of(depts, users, mirror(*before))
    before_users = {u.key for u in before[1]}
    after_users = {u.key for u in users}
    assert {op.key for op in plan.user_creates} == after_users - before_users
    assert {u.key for u in plan.user_removals} == before_users - after_users
    assert {d.department_id for d in plan.department_removals} == {d.id for d in before[0]} - {d.id for d in depts}


def _chunks_of(state: LocalState, size: int):
    keys = list(state.users)
    for start in range(0, len(keys), size):
        chunk = LocalState()
        for key in keys[start : start + size]:
            chunk.users[key] = state.users[key]
            if key in state.memberships:
                chunk.memberships[key] = state.memberships[key]
        yield chunk


def _summary(plan):
    return (
        sorted((op.key, op.action, op.added, op.removed, op.changed) for op in plan.user_ops),
        sorted(u.key for u in plan.user_removals),
        sorted((op.department_id, op.action, op.parent_id) for op in plan.department_ops),
        sorted(d.department_id for d in plan.department_removals),
        plan.unchanged_users,
        plan.local_active_users,
    )


@settings(max_examples=60, deadline=None)
@given(directories(), directories(), st.integers(1, 5), st.booleans())
def test_chunked_full_plan_equals_the_whole_plan(before, after, size, complete):
    """Reading local users chunk by chunk (bounded memory) plans exactly what reading them at once does."""
    depts, users = after
    local = mirror(*before)
    whole = plan_of(depts, users, local, complete=complete)
    chunked, gone = build_full_plan(
        {d.id: d for d in depts}, {u.key: u for u in users}, local.departments, _chunks_of(local, size),
        root_id=1, complete=complete,
    )
    assert _summary(chunked) == _summary(whole)
    assert set(gone.users) == {u.key for u in whole.user_removals}
