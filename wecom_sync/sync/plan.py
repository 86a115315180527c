"""The pure diff of the sync engine: remote objects + a plain description of local rows in, a Plan out.

No ORM and no HTTP here (house rule 2): this is what makes dry runs free and the tests fast. Everything is
keyed by WeCom ids (department ids, normalised userids); the apply layer maps them to primary keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from django.utils.translation import gettext as _

from .snapshot import RemoteDepartment, RemoteUser, normalize_userid

#: (order, is_leader, is_main) of one membership.
MembershipState = tuple[int, bool, bool]
#: A member's memberships as stored in LocalState: ((department id, order, is_leader, is_main), ...) sorted.
MembershipRows = tuple[tuple[int, int, bool, bool], ...]

#: Raw user keys that only describe where a member sits: a change limited to these is a move.
MOVE_KEYS = frozenset({"department", "main_department"})
PLACEMENT_KEYS = MOVE_KEYS | {"order", "is_leader_in_dept"}
#: Length of the stored department names (``ExternalDepartment.name`` and ``name_en``): compared as stored.
DEPARTMENT_NAME_LENGTH = 255


class LocalDepartment(NamedTuple):
    """What the plan needs to know of an ``ExternalDepartment`` row."""

    pk: int
    department_id: int
    parent_id: int | None  # WeCom id of the current local parent
    remote_parent_id: int | None
    name: str
    name_en: str
    order: int
    leaders: tuple[str, ...]
    digest: str
    is_removed: bool


class LocalUser(NamedTuple):
    """What the plan needs to know of an ``ExternalUser`` row."""

    pk: int
    userid: str
    key: str
    digest: str
    status: int
    is_removed: bool
    user_pk: int | None


@dataclass(slots=True)
class LocalState:
    """The local rows of one source, as plain values (compact: a large directory has 100k members)."""

    departments: dict[int, LocalDepartment] = field(default_factory=dict)
    users: dict[str, LocalUser] = field(default_factory=dict)
    #: normalised userid -> sorted ((department id, order, is_leader, is_main), ...)
    memberships: dict[str, MembershipRows] = field(default_factory=dict)

    def memberships_of(self, key: str) -> dict[int, MembershipState]:
        """The memberships of one member as {department id: (order, is_leader, is_main)}."""
        return {d: (o, lead, main) for d, o, lead, main in self.memberships.get(key, ())}


def as_rows(memberships: Mapping[int, MembershipState]) -> MembershipRows:
    """The LocalState form of a {department id: (order, is_leader, is_main)} mapping."""
    return tuple(sorted((d, o, lead, main) for d, (o, lead, main) in memberships.items()))


@dataclass(slots=True)
class _DepartmentOp:
    """What every operation on one department knows."""

    department_id: int
    remote: RemoteDepartment
    parent_id: int | None  # WeCom id of the desired local parent
    fields: dict[str, Any]  # field -> [old, new]


@dataclass(slots=True)
class DepartmentCreate(_DepartmentOp):
    """Create one department new to the mirror."""

    action: str = "created"
    local: None = None


@dataclass(slots=True)
class DepartmentUpdate(_DepartmentOp):
    """Update, move or bring back one department of the mirror."""

    action: str  # updated / moved / reactivated
    local: LocalDepartment


#: One operation on a department (the plan keeps them parents first, creates and updates mixed).
DepartmentOp = DepartmentCreate | DepartmentUpdate


@dataclass(slots=True)
class _MemberOp:
    """What every operation on one member knows: the remote member and the synced departments."""

    key: str
    remote: RemoteUser
    digest: str
    #: the synced department ids (shared by every op of a plan): memberships are derived, not stored
    universe: frozenset[int] | set[int]

    @property
    def memberships(self) -> dict[int, MembershipState]:
        """The memberships the member should have: {department id: (order, is_leader, is_main)}."""
        return desired_memberships(self.remote, self.universe)


@dataclass(slots=True)
class UserCreate(_MemberOp):
    """Create (or link) the Django user of a member new to the mirror, with all its memberships."""

    action: str = "created"
    local: None = None
    content_changed: bool = True
    renamed_from: None = None
    added: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    changed: tuple[int, ...] = ()
    kept: tuple[int, ...] = ()

    @property
    def memberships_changed(self) -> bool:
        return False


@dataclass(slots=True)
class UserUpdate(_MemberOp):
    """Update, move, (de)activate or re-key one member of the mirror."""

    action: str  # updated / moved / deactivated / reactivated
    local: LocalUser
    content_changed: bool
    added: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    changed: tuple[int, ...] = ()
    renamed_from: str | None = None
    #: departments of a partial fetch that were not read: the member's memberships there are kept
    kept: tuple[int, ...] = ()

    @property
    def memberships_changed(self) -> bool:
        return bool(self.added or self.removed or self.changed)


#: One operation on a member.
UserOp = UserCreate | UserUpdate


@dataclass(slots=True)
class Plan:
    """Everything a run would change. Unchanged objects appear only in the counters."""

    department_ops: list[DepartmentOp] = field(default_factory=list)
    department_removals: list[LocalDepartment] = field(default_factory=list)
    user_ops: list[UserOp] = field(default_factory=list)
    user_removals: list[LocalUser] = field(default_factory=list)
    unchanged_departments: int = 0
    unchanged_users: int = 0
    #: (department id, name, message) of departments the directory reports wrongly (a parent cycle)
    department_problems: list[tuple[int, str, str]] = field(default_factory=list)
    removals_allowed: bool = False
    #: local users that count for the removal threshold (not yet removed)
    local_active_users: int = 0

    @property
    def user_creates(self) -> list[UserCreate]:
        return [op for op in self.user_ops if isinstance(op, UserCreate)]

    @property
    def user_updates(self) -> list[UserUpdate]:
        return [op for op in self.user_ops if isinstance(op, UserUpdate)]

    @property
    def is_empty(self) -> bool:
        return not (self.department_ops or self.department_removals or self.user_ops or self.user_removals)


def default_is_active(status: int) -> bool:
    """Status 1 (and 4) count as active; used when no adapter is given."""
    return status in (1, 4)


def exceeds_threshold(removals: int, total: int, *, count: int, percent: int) -> bool:
    """Whether removing ``removals`` of ``total`` users passes the source's removal threshold."""
    if removals <= 0:
        return False
    if removals > count:
        return True
    return total > 0 and removals * 100 > percent * total


def diff_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Return ``{key: [old, new]}`` for every top-level key whose value differs between two payloads."""
    out: dict[str, list[Any]] = {}
    for key in sorted(set(old) | set(new)):
        if key in ("errcode", "errmsg"):
            continue
        if old.get(key) != new.get(key):
            out[key] = [old.get(key), new.get(key)]
    return out


def refine_user_action(action: str, fields: Mapping[str, Any]) -> str:
    """Turn ``updated`` into ``moved`` when only the member's departments changed."""
    if action == "updated" and fields and set(fields) <= PLACEMENT_KEYS and set(fields) & MOVE_KEYS:
        return "moved"
    return action


def _depth(dept_id: int, parents: Mapping[int, int | None]) -> int:
    depth, seen = 0, {dept_id}
    current = parents.get(dept_id)
    while current is not None and current in parents and current not in seen:
        seen.add(current)
        depth += 1
        current = parents.get(current)
    return depth


def local_parent_for(
    remote: RemoteDepartment, root_id: int | None, universe: Mapping[int, Any] | set[int]
) -> int | None:
    """The local parent of a department: its WeCom parent if synced, else the synced root."""
    if remote.id == root_id:
        return None
    if remote.parent_id is not None and remote.parent_id in universe and remote.parent_id != remote.id:
        return remote.parent_id
    if root_id is not None and root_id in universe:
        return root_id
    return None


def as_stored(dept: RemoteDepartment, row: LocalDepartment | None) -> RemoteDepartment:
    """The department as it will be stored: names cut to their column, an empty name keeping the local one."""
    name = dept.name or (row.name if row is not None else "")
    name, name_en = name[:DEPARTMENT_NAME_LENGTH], dept.name_en[:DEPARTMENT_NAME_LENGTH]
    if name == dept.name and name_en == dept.name_en:
        return dept
    return replace(dept, name=name, name_en=name_en)


def break_cycles(
    planned: Mapping[int, int | None], local: Mapping[int, LocalDepartment], *, root_id: int | None
) -> dict[int, tuple[int, ...]]:
    """Find the parent cycles of the tree that ``planned`` parents would make; return {breaker: cycle}.

    ``planned`` maps department ids to their new local parent; the others keep their local parent. The
    breaker of each cycle is its smallest planned department: hung under the root, it ends the loop.
    """
    parents: dict[int, int | None] = {d.department_id: d.parent_id for d in local.values() if not d.is_removed}
    parents.update(planned)
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    out: dict[int, tuple[int, ...]] = {}
    for start in planned:
        path: list[int] = []
        node: int | None = start
        while node is not None and node in parents and state.get(node) is None:
            state[node] = 1
            path.append(node)
            node = parents[node]
        if node is not None and state.get(node) == 1:
            cycle = tuple(path[path.index(node):])
            candidates = [d for d in cycle if d in planned and d != root_id]
            if candidates:
                out[min(candidates)] = cycle
        for visited in path:
            state[visited] = 2
    return out


def plan_departments(
    remote: Mapping[int, RemoteDepartment],
    local: Mapping[int, LocalDepartment],
    *,
    root_id: int | None,
    universe: set[int],
    problems: list[tuple[int, str, str]] | None = None,
) -> tuple[list[DepartmentOp], int]:
    """Return the department operations (parents first) and the number of unchanged departments.

    A parent cycle reported by the API is broken by hanging one of its departments under the root (as an
    orphan is) and appended to ``problems``.
    """
    ops: list[DepartmentOp] = []
    unchanged = 0
    planned = {dept.id: local_parent_for(dept, root_id, universe) for dept in remote.values()}
    for breaker, cycle in break_cycles(planned, local, root_id=root_id).items():
        planned[breaker] = root_id if root_id is not None and root_id in universe and root_id != breaker else None
        if problems is not None:
            path = " → ".join(str(d) for d in (*cycle, cycle[0]))
            problems.append((breaker, remote[breaker].name, _(
                "Parent cycle %(path)s: hung under the root until WeCom reports a valid parent."
            ) % {"path": path}))
    for dept in remote.values():
        parent = planned[dept.id]
        row = local.get(dept.id)
        dept = as_stored(dept, row)
        if row is None:
            fields = {"name": [None, dept.name], "parent": [None, parent]}
            ops.append(DepartmentCreate(dept.id, dept, parent, fields))
            continue
        fields = {}
        for name, old, new in (
            ("name", row.name, dept.name),
            ("name_en", row.name_en, dept.name_en),
            ("order", row.order, dept.order),
            ("leaders", list(row.leaders), list(dept.leaders)),
            ("parent", row.parent_id, parent),
            ("remote_parent", row.remote_parent_id, dept.parent_id),
        ):
            if old != new:
                fields[name] = [old, new]
        if row.is_removed:
            action = "reactivated"
        elif "parent" in fields or "remote_parent" in fields:
            action = "moved"
        elif fields or row.digest != dept.digest:
            action = "updated"
        else:
            unchanged += 1
            continue
        ops.append(DepartmentUpdate(dept.id, dept, parent, fields, action=action, local=row))
    parents = {op.department_id: op.parent_id for op in ops}
    ops.sort(key=lambda op: (_depth(op.department_id, parents), op.department_id))
    return ops, unchanged


def desired_memberships(
    remote: RemoteUser, universe: AbstractSet[int] | Mapping[int, Any]
) -> dict[int, MembershipState]:
    """The memberships a remote user should have among the synced departments."""
    return {
        dept: (order, leader, main)
        for dept, order, leader, main in remote.memberships()
        if dept in universe
    }


def plan_users(
    remote: Mapping[str, RemoteUser],
    local: LocalState,
    *,
    universe: set[int],
    is_active: Callable[[int], bool] = default_is_active,
    readable: set[int] | None = None,
) -> tuple[list[UserOp], int]:
    """Return the user operations and the number of unchanged users.

    ``readable``: the departments whose members were read (None: all). A membership elsewhere is never
    removed: a partial fetch cannot tell a member who left a department from one it could not see there.
    """
    ops: list[UserOp] = []
    unchanged = 0
    local_users = local.users
    local_memberships = local.memberships
    for key, user in remote.items():
        row = local_users.get(key)
        wanted = desired_memberships(user, universe)
        digest = user.digest
        if row is None:
            ops.append(UserCreate(key, user, digest, universe))
            continue
        content_changed = row.digest != digest or row.userid != user.userid
        kept: tuple[int, ...] = ()
        added: tuple[int, ...] = ()
        removed: tuple[int, ...] = ()
        changed: tuple[int, ...] = ()
        if local_memberships.get(key, ()) != as_rows(wanted):
            current = local.memberships_of(key)
            added = tuple(sorted(set(wanted) - set(current)))
            removed = tuple(sorted(set(current) - set(wanted)))
            changed = tuple(sorted(d for d in set(wanted) & set(current) if wanted[d] != current[d]))
            if readable is not None:
                kept = tuple(d for d in removed if d not in readable)
                removed = tuple(d for d in removed if d in readable)
                if kept:
                    # The main department may be one that was not read: is_main cannot be judged.
                    changed = tuple(d for d in changed if wanted[d][:2] != current[d][:2])
        if row.is_removed:
            action = "reactivated"
        elif is_active(row.status) and not is_active(user.status):
            action = "deactivated"
        elif not is_active(row.status) and is_active(user.status):
            action = "reactivated"
        elif content_changed:
            action = "updated"
        elif added or removed or changed:
            action = "moved"
        else:
            unchanged += 1
            continue
        ops.append(UserUpdate(key, user, digest, universe, action=action, local=row, content_changed=content_changed,
                              added=added, removed=removed, changed=changed, kept=kept))
    return ops, unchanged


def build_plan(
    departments: Mapping[int, RemoteDepartment],
    users: Mapping[str, RemoteUser],
    local: LocalState,
    *,
    root_id: int | None,
    full: bool,
    complete: bool,
    is_active: Callable[[int], bool] = default_is_active,
) -> Plan:
    """Diff remote objects against local state.

    ``full``: the remote objects are the whole directory, so local objects missing from it are removal
    candidates; removals are only planned when ``complete`` is also true (rule 1). With ``full=False``
    (callback events) only the given objects are touched.
    """
    removals_allowed = full and complete
    keep_local = {
        d.department_id
        for d in local.departments.values()
        if not d.is_removed and not (removals_allowed and d.department_id not in departments)
    }
    universe = set(departments) | keep_local
    problems: list[tuple[int, str, str]] = []
    dept_ops, dept_unchanged = plan_departments(departments, local.departments, root_id=root_id, universe=universe,
                                                problems=problems)
    user_ops, user_unchanged = plan_users(users, local, universe=universe, is_active=is_active)
    plan = Plan(
        department_problems=problems,
        department_ops=dept_ops,
        user_ops=user_ops,
        unchanged_departments=dept_unchanged,
        unchanged_users=user_unchanged,
        removals_allowed=removals_allowed,
        local_active_users=sum(1 for u in local.users.values() if not u.is_removed),
    )
    if removals_allowed:
        plan.department_removals = [
            d for d in local.departments.values() if not d.is_removed and d.department_id not in departments
        ]
        plan.department_removals.sort(key=lambda d: d.department_id)
        plan.user_removals = [u for u in local.users.values() if not u.is_removed and u.key not in users]
        plan.user_removals.sort(key=lambda u: u.key)
    return plan


def build_full_plan(
    departments: Mapping[int, RemoteDepartment],
    users: Mapping[str, RemoteUser],
    local_departments: Mapping[int, LocalDepartment],
    user_chunks: Iterable[LocalState],
    *,
    root_id: int | None,
    complete: bool,
    is_active: Callable[[int], bool] = default_is_active,
    readable: set[int] | None = None,
) -> tuple[Plan, LocalState]:
    """The plan of a full sync, reading local users chunk by chunk (bounded memory on big directories).

    Same result as ``build_plan(..., full=True)`` over the union of the chunks. Returns the plan and a
    LocalState of the removal candidates only (what ``detect_renames`` needs). ``readable`` (a partial
    fetch): the departments whose members were read; memberships elsewhere are kept (rule 1).
    """
    if complete:
        readable = None
    removals_allowed = complete
    keep_local = {
        d.department_id
        for d in local_departments.values()
        if not d.is_removed and not (removals_allowed and d.department_id not in departments)
    }
    universe = set(departments) | keep_local
    problems: list[tuple[int, str, str]] = []
    dept_ops, dept_unchanged = plan_departments(departments, local_departments, root_id=root_id, universe=universe,
                                                problems=problems)
    plan = Plan(department_ops=dept_ops, unchanged_departments=dept_unchanged, removals_allowed=removals_allowed,
                department_problems=problems)
    gone = LocalState()
    seen: set[str] = set()
    for chunk in user_chunks:
        present = {key: users[key] for key in chunk.users if key in users}
        ops, unchanged = plan_users(present, chunk, universe=universe, is_active=is_active, readable=readable)
        plan.user_ops.extend(ops)
        plan.unchanged_users += unchanged
        seen.update(present)
        for row in chunk.users.values():
            if row.is_removed:
                continue
            plan.local_active_users += 1
            if removals_allowed and row.key not in users:
                plan.user_removals.append(row)
                gone.users[row.key] = row
                if row.key in chunk.memberships:
                    gone.memberships[row.key] = chunk.memberships[row.key]
    new = {key: user for key, user in users.items() if key not in seen}
    ops, _unchanged = plan_users(new, LocalState(), universe=universe, is_active=is_active)
    plan.user_ops.extend(ops)
    if removals_allowed:
        plan.department_removals = sorted(
            (d for d in local_departments.values() if not d.is_removed and d.department_id not in departments),
            key=lambda d: d.department_id,
        )
        plan.user_removals.sort(key=lambda u: u.key)
    return plan, gone


def _contact_keys(name: str, values: Iterable[str]) -> set[tuple[str, str]]:
    return {(name.strip(), v.strip().lower()) for v in values if v and v.strip() and name.strip()}


def detect_renames(plan: Plan, contacts: Mapping[str, Mapping[str, Any]], local: LocalState) -> int:
    """Turn (removed userid, new userid) pairs that are clearly the same person into renames.

    A full sync sees a userid rename (WeCom's ``NewUserID``) as one member gone and one new. They are the
    same person when they have the same name and share a non-empty biz_mail, email or mobile, and that
    match is unique on both sides. ``contacts`` maps removal candidates' keys to their stored raw payload.
    Returns the number of renames found; the plan is changed in place.
    """
    if not plan.user_removals:
        return 0
    creates = plan.user_creates
    if not creates:
        return 0
    index: dict[tuple[str, str], list[str]] = {}
    for key, raw in contacts.items():
        values = (str(raw.get("biz_mail") or ""), str(raw.get("email") or ""), str(raw.get("mobile") or ""))
        for ck in _contact_keys(str(raw.get("name") or ""), values):
            index.setdefault(ck, []).append(key)
    matches: dict[str, set[str]] = {}  # new key -> old keys
    for op in creates:
        r = op.remote
        for ck in _contact_keys(r.name, (r.biz_mail, r.email, r.mobile)):
            for old in index.get(ck, ()):
                matches.setdefault(op.key, set()).add(old)
    claimed: dict[str, list[str]] = {}
    for new, olds in matches.items():
        if len(olds) == 1:
            claimed.setdefault(next(iter(olds)), []).append(new)
    pairs = {news[0]: old for old, news in claimed.items() if len(news) == 1}
    if not pairs:
        return 0
    removed_keys = set(pairs.values())
    for position, new_op in enumerate(plan.user_ops):
        old_key = pairs.get(new_op.key)
        if old_key is None:
            continue
        row = local.users[old_key]
        current = local.memberships_of(old_key)
        wanted = new_op.memberships
        plan.user_ops[position] = UserUpdate(
            new_op.key, new_op.remote, new_op.digest, new_op.universe,
            action="reactivated" if row.is_removed else "updated",
            local=row,
            content_changed=True,
            added=tuple(sorted(set(wanted) - set(current))),
            removed=tuple(sorted(set(current) - set(wanted))),
            changed=tuple(sorted(d for d in set(wanted) & set(current) if wanted[d] != current[d])),
            renamed_from=row.userid,
        )
    plan.user_removals = [u for u in plan.user_removals if u.key not in removed_keys]
    return len(pairs)


__all__ = [
    "DepartmentCreate",
    "DepartmentOp",
    "DepartmentUpdate",
    "LocalDepartment",
    "LocalState",
    "LocalUser",
    "Plan",
    "UserCreate",
    "UserOp",
    "UserUpdate",
    "as_rows",
    "build_full_plan",
    "build_plan",
    "default_is_active",
    "desired_memberships",
    "detect_renames",
    "diff_fields",
    "exceeds_threshold",
    "normalize_userid",
    "refine_user_action",
]
