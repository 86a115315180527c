"""Apply a Plan with batched bulk queries, and the event-facing functions that share the same code.

Every write goes through ``Applier``: full syncs, held-run approvals and callback events alike, so a user
created by an event and one created by a full sync are indistinguishable (same adapter, same signals,
same ``SyncRunChange`` rows). Each batch is one transaction; when a batch fails in the database it is
retried one object at a time so that one bad object becomes one ``failed`` change (rule 8).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from django.contrib.auth.models import Group
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, models, router, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from ..adapter import DefaultWeComAdapter, LinkError, LinkRefused, get_adapter
from ..conf import app_settings
from ..models import ExternalDepartment, ExternalMembership, ExternalUser, SyncRun, SyncRunChange, SyncSource
from ..signals import notify, user_created, user_deactivated, user_reactivated, user_updated
from ..snapshot import RemoteDepartment, RemoteUser, normalize_userid
from .plan import (
    PLACEMENT_KEYS,
    DepartmentOp,
    LocalDepartment,
    LocalState,
    LocalUser,
    Plan,
    UserOp,
    build_plan,
    diff_fields,
    refine_user_action,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

EXT_USER_FIELDS = ["userid", "userid_key", "name", "status", "raw", "digest", "is_removed", "removed_at", "updated_at",
                   "last_seen_at"]
DEPT_FIELDS = ["name", "name_en", "order", "leaders", "raw", "digest", "remote_parent_id", "is_removed", "removed_at",
               "updated_at", "last_seen_at"]
CHANGE_COLUMNS = ["run", "object_type", "external_id", "display_name", "action", "fields", "error", "applied",
                  "created_at"]
MEMBERSHIP_COLUMNS = ["user", "department", "order", "is_leader", "is_main"]
REMOVAL_ACTIONS = {
    SyncSource.RemovalPolicy.DEACTIVATE: SyncRunChange.Action.DEACTIVATED,
    SyncSource.RemovalPolicy.DELETE: SyncRunChange.Action.DELETED,
    SyncSource.RemovalPolicy.IGNORE: SyncRunChange.Action.REMOVED,
}


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Yield consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _short(text: Any, limit: int = 255) -> str:
    return str(text or "")[:limit]


def _execute_insert(connection: Any, model: type[models.Model], fields: Sequence[models.Field],
                    rows: Sequence[Sequence[Any]]) -> None:
    """INSERT ``rows`` (Python values, already ``pre_save``-d) in as few statements as the database allows.

    PostgreSQL: one ``INSERT ... SELECT ... FROM json_array_elements(%s)``: a single parameter, so the
    statement stays short whatever the number of rows. SQLite (and the rest): ``executemany``, in-process
    and cheap per row. Table, column and type names come from model metadata, never from data.
    """
    quote = connection.ops.quote_name
    head = f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql" and all(_unnest_ok(f) for f in fields):
            # The rows travel as one JSON array (serialised in C, parsed by PostgreSQL in C), whatever
            # their number: far cheaper than one parameter per value or per column.
            selects = []
            for i, f in enumerate(fields):
                if isinstance(f, models.JSONField):
                    selects.append(f"(e->{i})::jsonb")
                else:
                    selects.append(f"(e->>{i})::{f.db_type(connection)}")
            payload = json.dumps(
                [list(row) for row in rows], cls=DjangoJSONEncoder, ensure_ascii=False, separators=(",", ":")
            )
            cursor.execute(
                head + f"SELECT {', '.join(selects)} FROM jsonb_array_elements(%s::jsonb) AS e",  # noqa: S608
                [payload],
            )
            return
        prep = [not _is_plain(f) for f in fields]
        prepared = [
            [f.get_db_prep_save(v, connection) if p else v for f, p, v in zip(fields, prep, row, strict=True)]
            for row in rows
        ]
        cursor.executemany(head + "VALUES (" + ", ".join(["%s"] * len(fields)) + ")", prepared)


def insert_rows(model: type[models.Model], field_names: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """INSERT plain rows (ForeignKey values are primary keys) into one of our own tables, in bulk.

    ``bulk_create`` compiles every value of every model instance in Python, which dominates a large first
    sync; our own tables need no model instances.
    """
    if not rows:
        return
    connection = connections[router.db_for_write(model)]
    _execute_insert(connection, model, [model._meta.get_field(name) for name in field_names], rows)


#: Field types (exact: a subclass may adapt its values) whose Python value is what the driver takes.
_PLAIN_TYPES = frozenset({
    models.CharField, models.EmailField, models.SlugField, models.URLField, models.TextField, models.BooleanField,
    models.IntegerField, models.BigIntegerField, models.SmallIntegerField, models.PositiveIntegerField,
    models.PositiveSmallIntegerField, models.PositiveBigIntegerField,
})
#: Field types that PostgreSQL's JSON-array path handles.
_UNNEST_TYPES = _PLAIN_TYPES | {models.DateTimeField, models.JSONField}

#: Least seconds between two progress UPDATEs of the run (the last batch always reports).
PROGRESS_EVERY = 1.0


def _is_plain(field: models.Field) -> bool:
    return type(field) in _PLAIN_TYPES


def _needs_django_insert(model: type[models.Model]) -> bool:
    """Whether the model has columns our plain INSERT cannot write (a database default, a generated column)."""
    for f in model._meta.concrete_fields:
        if getattr(f, "generated", False):
            return True
        db_default = getattr(f, "db_default", models.NOT_PROVIDED)
        if db_default is not models.NOT_PROVIDED:
            return True
    return False


def _unnest_ok(field: models.Field) -> bool:
    if isinstance(field, models.ForeignKey):
        return type(field.target_field) in (models.AutoField, models.BigAutoField) or _is_plain(field.target_field)
    return type(field) in _UNNEST_TYPES


def insert_instances(
    model: type[models.Model], objs: Sequence[models.Model], key: str, scope: Mapping[str, Any] | None = None
) -> None:
    """INSERT unsaved instances in bulk, then set their primary keys by the unique ``key`` (within ``scope``).

    Used for models we do not own (the user model) and for departments: every concrete field goes through
    ``pre_save`` and, unless it is of a plain built-in type, ``get_db_prep_save``, as Django would do.
    """
    if not objs:
        return
    connection = connections[router.db_for_write(model)]
    if _needs_django_insert(model):
        # Database defaults, generated columns and the like are SQL that only Django's compiler writes.
        model._default_manager.using(connection.alias).bulk_create(objs)
        if all(obj.pk is not None for obj in objs):
            for obj in objs:
                obj._state.adding = False
                obj._state.db = connection.alias
            return
    else:
        fields = [f for f in model._meta.concrete_fields
                  if not (f.primary_key and getattr(objs[0], f.attname) is None)]
        plain = [_is_plain(f) for f in fields]
        rows = [
            [getattr(obj, f.attname) if is_plain else f.pre_save(obj, True)
             for f, is_plain in zip(fields, plain, strict=True)]
            for obj in objs
        ]
        if any(hasattr(v, "resolve_expression") for row in rows for v in row):
            model._default_manager.using(connection.alias).bulk_create(objs)
        else:
            _execute_insert(connection, model, fields, rows)
    by_key = {getattr(obj, key): obj for obj in objs}
    for value, pk in model._default_manager.using(connection.alias).filter(
        **(scope or {}), **{f"{key}__in": list(by_key)}
    ).values_list(key, "pk"):
        obj = by_key.get(value)
        if obj is not None:
            obj.pk = pk
            obj._state.adding = False
            obj._state.db = connection.alias


# -- local state ------------------------------------------------------------------------------------------


def load_local_departments(source: SyncSource) -> LocalState:
    """Read the source's departments (all of them: a few thousand at most) as plain values."""
    state = LocalState()
    rows = list(
        ExternalDepartment.objects.filter(source=source).values_list(
            "pk", "department_id", "parent_id", "remote_parent_id", "name", "name_en", "order", "leaders",
            "digest", "is_removed",
        )
    )
    pk_to_dept = {row[0]: row[1] for row in rows}
    for pk, dept_id, parent_pk, remote_parent, name, name_en, order, leaders, digest, removed in rows:
        state.departments[dept_id] = LocalDepartment(
            pk, dept_id, pk_to_dept.get(parent_pk), remote_parent, name, name_en, order,
            tuple(leaders or ()), digest, removed,
        )
    return state


def user_pk_converter() -> Callable[[Any], Any] | None:
    """How to turn a raw cursor value of ``ExternalUser.user_id`` into the user model's pk (None: as is).

    ``_stream`` skips Django's converters: a UUID primary key comes back as a string on SQLite, and would
    never equal the ``pk`` of a user loaded through the ORM.
    """
    target = ExternalUser._meta.get_field("user").target_field
    if isinstance(target, models.IntegerField | models.AutoField):
        return None
    return target.to_python


def _read_users(state: LocalState, users: Any) -> None:
    user_rows = users.values_list("pk", "userid", "userid_key", "digest", "status", "is_removed", "user_id")
    convert = user_pk_converter()
    for pk, userid, key, digest, status, removed, user_pk in _stream(user_rows):
        if userid == key:
            userid = key  # one string object instead of two equal ones
        if convert is not None and user_pk is not None:
            user_pk = convert(user_pk)
        state.users[key] = LocalUser(pk, userid, key, digest, status, bool(removed), user_pk)


def iter_local_users(source: SyncSource, departments: LocalState, size: int = 10000) -> Iterator[LocalState]:
    """Yield the source's users (with memberships) in chunks of ``size``, by primary key: two queries each."""
    pk_to_dept = {d.pk: d.department_id for d in departments.departments.values()}
    last = 0
    while True:
        chunk = LocalState()
        users = ExternalUser.objects.filter(source=source, pk__gt=last).order_by("pk")[:size]
        first_pk = last
        _read_users(chunk, users)
        if not chunk.users:
            return
        last = max(u.pk for u in chunk.users.values())
        memberships = ExternalMembership.objects.filter(
            user__source=source, user_id__gt=first_pk, user_id__lte=last
        )
        _read_memberships(chunk, memberships, pk_to_dept)
        yield chunk
        if len(chunk.users) < size:
            return


def _read_memberships(state: LocalState, memberships: Any, pk_to_dept: Mapping[int, int]) -> None:
    pk_to_key = {u.pk: u.key for u in state.users.values()}
    current_pk, items = None, []
    for user_pk, dept_pk, order, leader, main in _stream(
        memberships.order_by("user_id").values_list("user_id", "department_id", "order", "is_leader", "is_main")
    ):
        if user_pk != current_pk:
            if items and current_pk in pk_to_key:
                state.memberships[pk_to_key[current_pk]] = tuple(sorted(items))
            current_pk, items = user_pk, []
        dept_id = pk_to_dept.get(dept_pk)
        if dept_id is not None:
            items.append((dept_id, order, bool(leader), bool(main)))
    if items and current_pk in pk_to_key:
        state.memberships[pk_to_key[current_pk]] = tuple(sorted(items))


def load_local_state(
    source: SyncSource, *, user_keys: Iterable[str] | None = None, with_memberships: bool = True
) -> LocalState:
    """Read the source's local rows as plain values (all departments; all users or only ``user_keys``)."""
    state = load_local_departments(source)
    pk_to_dept = {d.pk: d.department_id for d in state.departments.values()}
    users = ExternalUser.objects.filter(source=source)
    if user_keys is not None:
        user_keys = list(user_keys)
        if not user_keys:
            return state
        users = users.filter(userid_key__in=user_keys)
    _read_users(state, users.order_by())
    if with_memberships and state.users:
        memberships = ExternalMembership.objects.filter(user__source=source)
        if user_keys is not None:
            memberships = memberships.filter(user_id__in=[u.pk for u in state.users.values()])
        _read_memberships(state, memberships, pk_to_dept)
    return state


def _stream(queryset: Any, size: int = 10000) -> Iterator[tuple]:
    """Yield the rows of a values_list queryset straight from the cursor, in chunks.

    Skips Django's per-value converters, which dominate reading 100k small rows; callers cast booleans.
    """
    sql, params = queryset.query.sql_with_params()
    connection = connections[queryset.db]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        while True:
            chunk = cursor.fetchmany(size)
            if not chunk:
                return
            yield from chunk


def load_contacts(source: SyncSource, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Return the name and contact fields of the given local users (for rename detection)."""
    out: dict[str, dict[str, Any]] = {}
    size = app_settings.BATCH_SIZE
    for batch in chunks(list(keys), size):
        for key, raw in ExternalUser.objects.filter(source=source, userid_key__in=batch).values_list(
            "userid_key", "raw"
        ):
            raw = raw or {}
            out[key] = {k: raw.get(k) for k in ("name", "biz_mail", "email", "mobile")}
    return out


# -- the applier ------------------------------------------------------------------------------------------


class _Batch:
    """What one batch produced: change rows and signals, kept until the batch commits."""

    def __init__(self) -> None:
        self.changes: list[tuple] = []
        self.signals: list[tuple[Any, dict[str, Any]]] = []
        self.counters: Counter[str] = Counter()
        self.now = timezone.now()


class Applier:
    """Writes one plan (or one set of event objects) for one source into one run."""

    def __init__(
        self,
        source: SyncSource,
        run: SyncRun,
        *,
        dry_run: bool = False,
        adapter: DefaultWeComAdapter | None = None,
        track_progress: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.source = source
        self.run = run
        self.dry_run = dry_run
        self.adapter = adapter or get_adapter()
        self.batch_size = app_settings.BATCH_SIZE
        self.mirror_groups = app_settings.MIRROR_GROUPS
        self.counters: Counter[str] = Counter()
        self.track_progress = track_progress
        self.on_progress = on_progress
        self.done = 0
        self.total = 0
        self.user_model = self.adapter.get_user_model()
        groups_field = self.user_model._meta.get_field("groups") if self._has_groups() else None
        self.group_through = groups_field.remote_field.through if groups_field else None
        self.group_src = groups_field.m2m_field_name() if groups_field else ""
        self.group_dst = groups_field.m2m_reverse_field_name() if groups_field else ""
        self.dept_pk: dict[int, int] = {}
        self.dept_group: dict[int, int | None] = {}  # dept pk -> mirrored group pk
        self.parent_done: set[int] = set()
        self.last_progress = 0.0  # departments inserted with their final parent

    def _has_groups(self) -> bool:
        try:
            self.user_model._meta.get_field("groups")
        except Exception:  # noqa: BLE001 - a custom user model without groups
            return False
        return True

    # -- bookkeeping --------------------------------------------------------------------------------------

    def load_departments(self) -> None:
        """Load the WeCom id -> pk map (and mirrored groups) of the source's departments."""
        for pk, dept_id, group_id in ExternalDepartment.objects.filter(source=self.source).values_list(
            "pk", "department_id", "group_id"
        ):
            self.dept_pk[dept_id] = pk
            self.dept_group[pk] = group_id

    def change(
        self,
        batch: _Batch,
        object_type: str,
        external_id: Any,
        action: str,
        *,
        name: str = "",
        fields: Mapping[str, Any] | None = None,
        error: str = "",
        applied: bool | None = None,
    ) -> None:
        """Record one change of the run (written with the batch)."""
        batch.changes.append(
            (
                self.run.pk, object_type, _short(external_id, 64), _short(name), action, dict(fields or {}), error,
                (not self.dry_run) if applied is None else applied, batch.now,
            )
        )
        kind = "users" if object_type == SyncRunChange.ObjectType.USER else "departments"
        batch.counters[f"{kind}_{action}"] += 1

    def _guarded(self, items: Sequence[T], work: Callable[[Sequence[T], _Batch], None],
                 describe: Callable[[T], tuple[str, str, str]]) -> None:
        """Run ``work`` on a batch in one transaction; on failure, retry item by item and record failures."""
        batch = _Batch()
        # What the batch learns about departments (new primary keys, parents, groups) is only true once its
        # transaction commits: keep the state from before, to restore it when the batch rolls back.
        saved = (dict(self.dept_pk), dict(self.dept_group), set(self.parent_done))
        try:
            with transaction.atomic():
                work(items, batch)
                self._write_changes(batch.changes)
        except Exception as exc:  # noqa: BLE001 - one bad object must not abort the run (rule 8)
            self.dept_pk, self.dept_group, self.parent_done = saved
            if len(items) > 1:
                for item in items:
                    self._guarded([item], work, describe)
                return
            object_type, external_id, name = describe(items[0])
            logger.warning(
                "wecom_sync.apply.object_failed",
                extra={"run_id": self.run.pk, "object_type": object_type, "external_id": external_id,
                       "error_type": type(exc).__name__},
            )
            failed = _Batch()
            self.change(failed, object_type, external_id, SyncRunChange.Action.FAILED, name=name,
                        error=_short(f"{type(exc).__name__}: {exc}", 2000), applied=False)
            self._write_changes(failed.changes)
            self.counters.update(failed.counters)
            return
        self.counters.update(batch.counters)
        for signal, kwargs in batch.signals:
            notify(signal, type(self.adapter), source=self.source, run=self.run, **kwargs)

    @staticmethod
    def _write_changes(rows: Sequence[tuple]) -> None:
        insert_rows(SyncRunChange, CHANGE_COLUMNS, rows)

    def _record_only(self, batch_changes: _Batch) -> None:
        self._write_changes(batch_changes.changes)
        self.counters.update(batch_changes.counters)

    def advance(self, count: int) -> None:
        """Count ``count`` objects as done; update the run's progress and heartbeat (one UPDATE)."""
        self.done += count
        now = time.monotonic()
        last = self.done >= self.total
        if self.track_progress and (last or now - self.last_progress >= PROGRESS_EVERY):
            self.last_progress = now
            SyncRun.objects.filter(pk=self.run.pk).update(
                progress_done=self.done, progress_total=max(self.total, self.done), heartbeat_at=timezone.now()
            )
        if self.on_progress is not None:
            self.on_progress(self.done, max(self.total, self.done))

    # -- whole plan ---------------------------------------------------------------------------------------

    def apply(self, plan: Plan, *, hold_removals: bool = False) -> None:
        """Apply every operation of ``plan``; removals are recorded as pending when held."""
        if not self.dept_pk:
            self.load_departments()
        self.total = (
            len(plan.department_ops) + len(plan.user_ops) + len(plan.user_removals) + len(plan.department_removals)
        )
        self.apply_departments(plan.department_ops)
        self.record_department_problems(plan.department_problems)
        if self.mirror_groups and not self.dry_run:
            self.ensure_groups()
        updates = [op for op in plan.user_ops if op.local is not None]
        creates = [op for op in plan.user_ops if op.local is None]
        for batch in chunks(updates, self.batch_size):
            self._guarded(batch, self._update_users, self._describe_op)
            self.advance(len(batch))
        for batch in chunks(creates, self.batch_size):
            self._guarded(batch, self._create_users, self._describe_op)
            self.advance(len(batch))
        pending = hold_removals or self.dry_run
        self.remove_users(plan.user_removals, pending=pending)
        self.remove_departments(plan.department_removals, pending=pending)

    def record_department_problems(self, problems: Sequence[tuple[int, str, str]]) -> None:
        """Record what the directory reports wrongly about departments (a parent cycle) as failed changes."""
        if not problems:
            return
        batch = _Batch()
        for dept_id, name, message in problems:
            self.change(batch, SyncRunChange.ObjectType.DEPARTMENT, dept_id, SyncRunChange.Action.FAILED, name=name,
                        error=_short(message, 2000), applied=False)
        self._record_only(batch)

    @staticmethod
    def _describe_op(op: UserOp) -> tuple[str, str, str]:
        return SyncRunChange.ObjectType.USER, op.remote.userid, op.remote.name

    # -- departments --------------------------------------------------------------------------------------

    def apply_departments(self, ops: Sequence[DepartmentOp]) -> None:
        """Create, update and move departments; parents are set once every department exists."""
        if not self.dept_pk:
            self.load_departments()
        for batch in chunks(list(ops), self.batch_size):
            self._guarded(batch, self._write_departments, self._describe_dept)
            self.advance(len(batch))
        if not self.dry_run:
            self._guarded(list(ops), self._set_parents, self._describe_dept)

    @staticmethod
    def _describe_dept(op: DepartmentOp) -> tuple[str, str, str]:
        return SyncRunChange.ObjectType.DEPARTMENT, str(op.department_id), op.remote.name

    def _dept_row(self, op: DepartmentOp, pk: int | None = None) -> ExternalDepartment:
        dept = op.remote
        return ExternalDepartment(
            pk=pk, source=self.source, department_id=dept.id, remote_parent_id=dept.parent_id, name=dept.name[:255],
            name_en=dept.name_en[:255], order=dept.order, leaders=list(dept.leaders), raw=dict(dept.raw),
            digest=dept.digest, is_removed=False, removed_at=None, updated_at=timezone.now(),
            last_seen_at=timezone.now(),
        )

    def _write_departments(self, ops: Sequence[DepartmentOp], batch: _Batch) -> None:
        for op in ops:
            self.change(batch, SyncRunChange.ObjectType.DEPARTMENT, op.department_id, op.action,
                        name=op.remote.name, fields=op.fields)
        if self.dry_run:
            return
        # Parents first, level by level, so that most parents are known when a department is inserted.
        pending = [op for op in ops if op.local is None and op.department_id not in self.dept_pk]
        while pending:
            waiting = {op.department_id for op in pending}
            level = [op for op in pending if op.parent_id not in waiting] or pending
            rows = []
            for op in level:
                row = self._dept_row(op)
                row.parent_id = self.dept_pk.get(op.parent_id) if op.parent_id is not None else None
                if op.parent_id is None or row.parent_id is not None:
                    self.parent_done.add(op.department_id)
                rows.append(row)
            for row in rows:
                row.created_at = row.updated_at
            insert_instances(ExternalDepartment, rows, "department_id", scope={"source": self.source})
            for d in rows:
                self.dept_pk[d.department_id] = d.pk
                self.dept_group.setdefault(d.pk, None)
            pending = [op for op in pending if op.department_id not in self.dept_pk]
        existing = [self._dept_row(op, self.dept_pk[op.department_id]) for op in ops if op.local is not None]
        if existing:
            ExternalDepartment.objects.bulk_update(existing, DEPT_FIELDS)
        if self.mirror_groups:
            renames = []
            for op in ops:
                group_id = self.dept_group.get(self.dept_pk.get(op.department_id, 0))
                if group_id and op.local is not None and "name" in op.fields:
                    renames.append((group_id, op.remote))
            self._rename_groups(renames)

    def _set_parents(self, ops: Sequence[DepartmentOp], batch: _Batch) -> None:
        rows = []
        for op in ops:
            if op.department_id in self.parent_done or (op.local is not None and "parent" not in op.fields):
                continue
            pk = self.dept_pk.get(op.department_id)
            if pk is None:
                continue
            parent_pk = self.dept_pk.get(op.parent_id) if op.parent_id is not None else None
            rows.append(ExternalDepartment(pk=pk, parent_id=parent_pk))
        if rows:
            ExternalDepartment.objects.bulk_update(rows, ["parent"], batch_size=self.batch_size)

    # -- mirrored groups ----------------------------------------------------------------------------------

    def _group_name(self, dept: RemoteDepartment | None, dept_id: int, taken: set[str]) -> str:
        base = (dept.name if dept and dept.name else _("Department %(id)s") % {"id": dept_id})[:120]
        name = base
        if name in taken:
            name = f"{base} ({self.source.slug}-{dept_id})"[:150]
        taken.add(name)
        return name

    def _rename_groups(self, renames: Sequence[tuple[int, RemoteDepartment]]) -> None:
        if not renames:
            return
        names = {d.name for _gid, d in renames}
        taken = set(Group.objects.filter(name__in=names).values_list("name", flat=True))
        rows = [Group(pk=gid, name=self._group_name(d, d.id, taken)) for gid, d in renames]
        Group.objects.bulk_update(rows, ["name"])

    def ensure_groups(self) -> None:
        """Create the mirrored group of every synced department that has none, with its current members."""
        rows = list(
            ExternalDepartment.objects.filter(source=self.source, is_removed=False, group__isnull=True).values_list(
                "pk", "department_id", "name"
            )
        )
        if not rows or self.group_through is None:
            return
        with transaction.atomic():
            names = {name for _pk, _id, name in rows}
            taken = set(Group.objects.filter(name__in=names).values_list("name", flat=True))
            groups = []
            for pk, dept_id, name in rows:
                remote = RemoteDepartment(id=dept_id, name=name)
                groups.append((pk, Group(name=self._group_name(remote, dept_id, taken))))
            Group.objects.bulk_create([g for _pk, g in groups])
            by_name = dict(Group.objects.filter(name__in=[g.name for _pk, g in groups]).values_list("name", "pk"))
            updates = []
            for pk, group in groups:
                gid = group.pk or by_name.get(group.name)
                self.dept_group[pk] = gid
                updates.append(ExternalDepartment(pk=pk, group_id=gid))
            ExternalDepartment.objects.bulk_update(updates, ["group"])
            pairs = ExternalMembership.objects.filter(
                department_id__in=[pk for pk, _g in groups], user__user__isnull=False, user__is_removed=False
            ).values_list("user__user_id", "department_id")
            self._groups_add([(uid, self.dept_group[dpk]) for uid, dpk in pairs if self.dept_group.get(dpk)])

    def _groups_add(self, pairs: Iterable[tuple[int, int]]) -> None:
        pairs = {(u, g) for u, g in pairs if u and g}
        if not pairs or self.group_through is None:
            return
        src, dst = f"{self.group_src}_id", f"{self.group_dst}_id"
        self.group_through.objects.bulk_create(
            [self.group_through(**{src: u, dst: g}) for u, g in sorted(pairs)], ignore_conflicts=True
        )

    def _groups_remove(self, pairs: Iterable[tuple[int, int]]) -> None:
        pairs = {(u, g) for u, g in pairs if u and g}
        if not pairs or self.group_through is None:
            return
        query = Q()
        by_group: dict[int, list[int]] = {}
        for u, g in pairs:
            by_group.setdefault(g, []).append(u)
        for g, users in by_group.items():
            query |= Q(**{f"{self.group_dst}_id": g, f"{self.group_src}_id__in": users})
        self.group_through.objects.filter(query).delete()

    # -- users --------------------------------------------------------------------------------------------

    def _provision(
        self, remotes: Sequence[RemoteUser], batch: _Batch
    ) -> dict[str, tuple[Any, bool] | Exception]:
        """Find (link) or create the Django user of each remote user; return key -> (user, created) or error."""
        out: dict[str, tuple[Any, bool] | Exception] = {}
        links = self.adapter.find_existing_users(self.source, remotes)
        new_pairs: list[tuple[RemoteUser, Any]] = []
        linked: list[tuple[Any, set[str]]] = []
        claimed: set[int] = set()
        kept = self.kept_active_elsewhere(
            u.pk for u in links.values() if u is not None and not isinstance(u, LinkError)
        ) if not self.dry_run else set()
        for remote in remotes:
            found = links.get(remote.key)
            try:
                if isinstance(found, LinkError):
                    out[remote.key] = found
                elif found is not None and found.pk in claimed:
                    out[remote.key] = LinkError(
                        _("Another member of this batch matches the same existing user; none was linked twice.")
                    )
                elif found is not None and not self.adapter.can_link(found):
                    out[remote.key] = LinkRefused(
                        _("An existing account with administrator rights matches this member; the sync never "
                          "links it. Link it by hand in the WeCom user's admin page if it is really theirs.")
                    )
                elif found is not None:
                    claimed.add(found.pk)
                    changed = self._populate(found, remote, ExternalUser.AccountOrigin.LINKED)
                    changed |= self._set_active(found, remote, kept)
                    linked.append((found, changed))
                    out[remote.key] = (found, False)
                else:
                    user = self.adapter.new_user(self.source, remote)
                    new_pairs.append((remote, user))
                    out[remote.key] = (user, True)
            except Exception as exc:  # noqa: BLE001 - an adapter error is this user's failure only
                out[remote.key] = exc
        if new_pairs:
            self.adapter.assign_usernames(self.source, new_pairs)
        if not self.dry_run:
            if new_pairs:
                insert_instances(self.user_model, [u for _r, u in new_pairs], self.user_model.USERNAME_FIELD)
            self._save_users(linked)
        return out

    def _populate(self, user: Any, remote: RemoteUser, origin: str) -> set[str]:
        """populate_user, keeping the fields the sync does not own on a linked or manual account."""
        protected = self.adapter.protected_fields(origin)
        kept = {name: getattr(user, name, None) for name in protected}
        changed = self.adapter.populate_user(user, remote, source=self.source, created=False)
        for name, value in kept.items():
            setattr(user, name, value)
        return changed - protected

    def _set_active(self, user: Any, remote: RemoteUser, kept: set[Any] | frozenset[Any] = frozenset()) -> set[str]:
        active = self.adapter.is_active_for_status(remote.status)
        if user.is_active == active or (not active and not self.adapter.can_deactivate(user)):
            return set()
        if not active and user.pk in kept:
            return set()  # another source still keeps the account active
        user.is_active = active
        return {"is_active"}

    def active_statuses(self) -> list[int]:
        """The WeCom statuses that give an active account, per the adapter."""
        return [s for s in ExternalUser.Status.values if self.adapter.is_active_for_status(s)]

    def kept_active_elsewhere(self, user_pks: Iterable[Any]) -> set[Any]:
        """The Django users among ``user_pks`` that another source still lists as active members.

        An account shared by several sources stays active while any of them keeps it so (one query).
        """
        pks = sorted({pk for pk in user_pks if pk is not None}, key=str)
        if not pks:
            return set()
        return set(
            ExternalUser.objects.filter(user_id__in=pks, is_removed=False, status__in=self.active_statuses())
            .exclude(source=self.source)
            .values_list("user_id", flat=True)
        )

    def heal_shared_accounts(self) -> None:
        """Reactivate the accounts this source lists as active that another source's removal deactivated."""
        if self.dry_run or not self.adapter._has_field("is_active"):
            return
        active = self.active_statuses()
        others = ExternalUser.objects.filter(user_id=models.OuterRef("user_id")).exclude(source=self.source).filter(
            Q(is_removed=True) | ~Q(status__in=active)
        )
        rows = list(
            ExternalUser.objects.filter(
                source=self.source, is_removed=False, status__in=active, user__isnull=False,
                user__is_active=False,
            ).filter(models.Exists(others)).only("pk", "userid", "name", "user_id")
        )
        for batch_rows in chunks(rows, self.batch_size):
            batch = _Batch()
            users = {u.pk: u for u in self.user_model._default_manager.filter(pk__in=[e.user_id for e in batch_rows])}
            with transaction.atomic():
                for ext in batch_rows:
                    user = users.get(ext.user_id)
                    if user is None:
                        continue
                    user.is_active = True
                    self.change(batch, SyncRunChange.ObjectType.USER, ext.userid, SyncRunChange.Action.REACTIVATED,
                                name=ext.name, fields={"is_active": [False, True]})
                    batch.signals.append((user_reactivated, {"user": user, "external_user": ext}))
                self.user_model._default_manager.filter(pk__in=list(users)).update(is_active=True)
                self._write_changes(batch.changes)
            self.counters.update(batch.counters)
            for signal, kwargs in batch.signals:
                notify(signal, type(self.adapter), source=self.source, run=self.run, **kwargs)

    def _save_users(self, users: Sequence[tuple[Any, set[str]]]) -> None:
        changed = [u for u, fields in users if fields]
        fields = sorted({f for _u, fs in users for f in fs})
        if changed and not self.dry_run:
            self.user_model._default_manager.bulk_update(changed, fields)

    def _write_memberships(self, ext_pk: int, op: UserOp, adds: list, removes: Q, group_add: list,
                           group_remove: list, user_pk: int | None, all_added: bool = False) -> Q:
        memberships = op.memberships
        for dept_id in (memberships if all_added else (*op.added, *op.changed)):
            dept_pk = self.dept_pk.get(dept_id)
            if dept_pk is None:
                continue
            order, leader, main = memberships[dept_id]
            adds.append((ext_pk, dept_pk, order, leader, main))
            if dept_id in op.added or all_added:
                group_add.append((user_pk, self.dept_group.get(dept_pk)))
        gone = [self.dept_pk[d] for d in (*op.removed, *op.changed) if d in self.dept_pk]
        if gone:
            removes |= Q(user_id=ext_pk, department_id__in=gone)
            for d in op.removed:
                if d in self.dept_pk:
                    group_remove.append((user_pk, self.dept_group.get(self.dept_pk[d])))
        return removes

    def _create_users(self, ops: Sequence[UserOp], batch: _Batch) -> None:
        provisioned = self._provision([op.remote for op in ops], batch)
        rows: list[tuple[UserOp, Any, bool]] = []
        for op in ops:
            result = provisioned.get(op.key)
            if isinstance(result, LinkRefused):
                self.change(batch, SyncRunChange.ObjectType.USER, op.remote.userid, SyncRunChange.Action.SKIPPED,
                            name=op.remote.name, error=_short(result.message, 2000), applied=False)
                continue
            if isinstance(result, Exception) or result is None:
                message = result.message if isinstance(result, LinkError) else f"{type(result).__name__}: {result}"
                self.change(batch, SyncRunChange.ObjectType.USER, op.remote.userid, SyncRunChange.Action.FAILED,
                            name=op.remote.name, error=_short(message, 2000), applied=False)
                continue
            user, created = result
            rows.append((op, user, created))
            username = getattr(user, self.user_model.USERNAME_FIELD, "")
            fields: dict[str, Any] = {"username": [None, username], "departments": [None, sorted(op.memberships)]}
            if not created:
                fields["linked"] = [None, username]
            self.change(batch, SyncRunChange.ObjectType.USER, op.remote.userid, SyncRunChange.Action.CREATED,
                        name=op.remote.name, fields=fields)
        if self.dry_run or not rows:
            return
        now = batch.now
        insert_rows(
            ExternalUser,
            ["source", "userid", "userid_key", "user", "account_origin", "name", "status", "raw", "digest",
             "is_removed", "created_at", "updated_at", "last_seen_at"],
            [
                (self.source.pk, op.remote.userid, op.key, user.pk,
                 ExternalUser.AccountOrigin.CREATED if created else ExternalUser.AccountOrigin.LINKED,
                 op.remote.name[:255], op.remote.status, op.remote.raw, op.digest, False, now, now, now)
                for op, user, created in rows
            ],
        )
        pks = dict(
            ExternalUser.objects.filter(source=self.source, userid_key__in=[op.key for op, _u, _c in rows]).values_list(
                "userid_key", "pk"
            )
        )
        adds: list[tuple] = []
        group_add: list[tuple[int, int]] = []
        notify = user_created.has_listeners()
        for op, user, created in rows:
            self._write_memberships(pks[op.key], op, adds, Q(), group_add, [], user.pk, all_added=True)
            if notify:
                ext = ExternalUser(
                    pk=pks[op.key], source=self.source, userid=op.remote.userid, userid_key=op.key, user=user,
                    name=op.remote.name[:255], status=op.remote.status, raw=op.remote.raw, digest=op.digest,
                    account_origin=(ExternalUser.AccountOrigin.CREATED if created
                                    else ExternalUser.AccountOrigin.LINKED),
                )
                ext._state.adding = False
                batch.signals.append((user_created, {"user": user, "external_user": ext}))
        if adds:
            insert_rows(ExternalMembership, MEMBERSHIP_COLUMNS, adds)
        if self.mirror_groups:
            self._groups_add(group_add)

    def _update_users(self, ops: Sequence[UserOp], batch: _Batch) -> None:
        ext_rows = {
            e.pk: e
            for e in ExternalUser.objects.filter(pk__in=[op.local.pk for op in ops]).only(
                "pk", "userid", "userid_key", "raw", "user_id", "name", "status", "is_removed", "source_id",
                "account_origin",
            )
        }
        users = {}
        if not self.dry_run:
            user_ids = [e.user_id for e in ext_rows.values() if e.user_id]
            users = {u.pk: u for u in self.user_model._default_manager.filter(pk__in=user_ids)}
        kept = self.kept_active_elsewhere(
            ext_rows[op.local.pk].user_id for op in ops
            if op.local.pk in ext_rows and not self.adapter.is_active_for_status(op.remote.status)
        ) if not self.dry_run else set()
        orphans = [op for op in ops if op.local.pk in ext_rows and ext_rows[op.local.pk].user_id is None]
        orphan_keys = {op.key for op in orphans}
        provisioned = self._provision([op.remote for op in orphans], batch) if orphans else {}
        ext_updates: list[ExternalUser] = []
        user_updates: list[tuple[Any, set[str]]] = []
        adds: list[tuple] = []
        removes = Q()
        group_add: list[tuple[int, int]] = []
        group_remove: list[tuple[int, int]] = []
        for op in ops:
            ext = ext_rows.get(op.local.pk)
            if ext is None:
                self.change(batch, SyncRunChange.ObjectType.USER, op.remote.userid, SyncRunChange.Action.FAILED,
                            name=op.remote.name, error=_("The local record disappeared during the run."),
                            applied=False)
                continue
            fields = diff_fields(ext.raw or {}, op.remote.raw) if op.content_changed else {}
            if op.renamed_from is not None or ext.userid != op.remote.userid:
                fields["userid"] = [ext.userid, op.remote.userid]
            if (op.kept and not op.memberships_changed and op.action == "updated" and set(fields) <= PLACEMENT_KEYS
                    and ext.user_id is not None):
                # A partial fetch saw only some of the member's departments: nothing of theirs changed.
                continue
            action = refine_user_action(op.action, fields)
            if op.memberships_changed:
                fields["memberships"] = {"added": list(op.added), "removed": list(op.removed),
                                         "changed": list(op.changed)}
            django_fields: set[str] = set()
            if op.key in orphan_keys:
                # The Django user was deleted (removal policy "delete") or unlinked: provision a new one.
                result = provisioned.get(op.key)
                if not isinstance(result, tuple):
                    message = result.message if isinstance(result, LinkError) else str(result)
                    refused = isinstance(result, LinkRefused)
                    self.change(batch, SyncRunChange.ObjectType.USER, op.remote.userid,
                                SyncRunChange.Action.SKIPPED if refused else SyncRunChange.Action.FAILED,
                                name=op.remote.name, error=_short(message, 2000), applied=False)
                    continue
                user = result[0]
                fields["username"] = [None, getattr(user, self.user_model.USERNAME_FIELD, "")]
            else:
                user = users.get(ext.user_id) if ext.user_id else None
                if user is not None:
                    if op.content_changed or op.local.is_removed:
                        django_fields = self._populate(user, op.remote, ext.account_origin)
                    django_fields |= self._set_active(user, op.remote, kept)
                    if django_fields:
                        user_updates.append((user, django_fields))
                    if action == SyncRunChange.Action.DEACTIVATED and user.is_active:
                        # The adapter kept the account active (a superuser): the mirror is updated, the
                        # Django user is not deactivated, and no deactivation is reported.
                        action = SyncRunChange.Action.UPDATED
            self.change(batch, SyncRunChange.ObjectType.USER, op.remote.userid, action, name=op.remote.name,
                        fields=fields)
            if self.dry_run:
                continue
            relink = op.key in orphan_keys
            if op.content_changed or op.local.is_removed or relink:
                ext.userid = op.remote.userid
                ext.userid_key = op.key
                ext.name = op.remote.name[:255]
                ext.status = op.remote.status
                ext.raw = dict(op.remote.raw)
                ext.digest = op.digest
                ext.is_removed = False
                ext.removed_at = None
                ext.updated_at = ext.last_seen_at = timezone.now()
                if relink:
                    ext.user_id = user.pk
                    ext.account_origin = (ExternalUser.AccountOrigin.CREATED if provisioned[op.key][1]
                                          else ExternalUser.AccountOrigin.LINKED)
                ext_updates.append(ext)
            user_pk = user.pk if user is not None else None
            if op.local.is_removed:
                # a member who comes back gets every membership again (removal deleted them)
                removes |= Q(user_id=ext.pk)
                self._write_memberships(ext.pk, op, adds, Q(), group_add, [], user_pk, all_added=True)
            else:
                removes = self._write_memberships(ext.pk, op, adds, removes, group_add, group_remove, user_pk)
            if action == SyncRunChange.Action.DEACTIVATED and user is not None:
                batch.signals.append((user_deactivated, {"user": user, "external_user": ext}))
            elif action == SyncRunChange.Action.REACTIVATED and user is not None:
                batch.signals.append((user_reactivated, {"user": user, "external_user": ext}))
            elif django_fields and user is not None:
                batch.signals.append((user_updated, {"user": user, "external_user": ext}))
        if self.dry_run:
            return
        if ext_updates:
            fields_to_save = EXT_USER_FIELDS + (["user", "account_origin"] if orphan_keys else [])
            ExternalUser.objects.bulk_update(ext_updates, fields_to_save)
        self._save_users(user_updates)
        if removes:
            ExternalMembership.objects.filter(removes).delete()
        if adds:
            insert_rows(ExternalMembership, MEMBERSHIP_COLUMNS, adds)
        if self.mirror_groups:
            self._groups_remove(group_remove)
            self._groups_add(group_add)

    # -- removals -----------------------------------------------------------------------------------------

    def remove_users(self, rows: Sequence[LocalUser], *, pending: bool = False) -> None:
        """Apply the source's removal policy to users gone from the directory (or record them as pending)."""
        action = REMOVAL_ACTIONS.get(self.source.removal_policy, SyncRunChange.Action.DEACTIVATED)
        for batch_rows in chunks(list(rows), self.batch_size):
            if pending:
                batch = _Batch()
                for row in batch_rows:
                    self.change(batch, SyncRunChange.ObjectType.USER, row.userid, action, applied=False)
                batch.counters = Counter({"pending_removals": len(batch_rows)})
                self._record_only(batch)
            else:
                self._guarded(batch_rows, self._remove_users, self._describe_local_user)
            self.advance(len(batch_rows))

    @staticmethod
    def _describe_local_user(row: LocalUser) -> tuple[str, str, str]:
        return SyncRunChange.ObjectType.USER, row.userid, ""

    def _remove_users(self, rows: Sequence[LocalUser], batch: _Batch) -> None:
        policy = self.source.removal_policy
        action = REMOVAL_ACTIONS.get(policy, SyncRunChange.Action.DEACTIVATED)
        user_pks = [r.user_pk for r in rows if r.user_pk]
        users = {u.pk: u for u in self.user_model._default_manager.filter(pk__in=user_pks)} if user_pks else {}
        exts = {e.pk: e for e in ExternalUser.objects.filter(pk__in=[r.pk for r in rows]).only(
            "pk", "userid", "name", "account_origin")}
        deactivate: list[int] = []
        delete: list[int] = []
        kept = self.kept_active_elsewhere(users) if policy != SyncSource.RemovalPolicy.IGNORE else set()
        # An account another source maps (even as removed) is shared: deleting it would destroy that mapping.
        shared = set(ExternalUser.objects.filter(user_id__in=list(users)).exclude(source=self.source).values_list(
            "user_id", flat=True)) if policy == SyncSource.RemovalPolicy.DELETE and users else set()
        for row in rows:
            user = users.get(row.user_pk) if row.user_pk else None
            ext = exts.get(row.pk)
            name = ext.name if ext is not None else ""
            if user is not None and policy != SyncSource.RemovalPolicy.IGNORE and not self.adapter.can_deactivate(user):
                self.change(batch, SyncRunChange.ObjectType.USER, row.userid, SyncRunChange.Action.SKIPPED,
                            name=name, error=_("Superusers are never deactivated or deleted by the sync."))
                continue
            if user is not None and user.pk in kept:
                self.change(batch, SyncRunChange.ObjectType.USER, row.userid, SyncRunChange.Action.SKIPPED,
                            name=name, error=_("Another source still lists this member: the account stays active."))
                continue
            # The sync deletes only accounts it created and alone maps: others are deactivated instead.
            owned = ext is None or ext.account_origin == ExternalUser.AccountOrigin.CREATED
            owned = owned and row.user_pk not in shared
            row_action = action
            if policy == SyncSource.RemovalPolicy.DELETE and user is not None and not owned:
                row_action = SyncRunChange.Action.DEACTIVATED
            self.change(batch, SyncRunChange.ObjectType.USER, row.userid, row_action, name=name)
            if user is None or policy == SyncSource.RemovalPolicy.IGNORE:
                continue
            if policy == SyncSource.RemovalPolicy.DELETE and owned:
                delete.append(user.pk)
            elif user.is_active:
                deactivate.append(user.pk)
                batch.signals.append((user_deactivated, {"user": user, "external_user": ext}))
        if self.dry_run:
            return
        now = timezone.now()
        ext_pks = [r.pk for r in rows]
        ExternalUser.objects.filter(pk__in=ext_pks).update(is_removed=True, removed_at=now, updated_at=now)
        memberships = ExternalMembership.objects.filter(user_id__in=ext_pks)
        if self.mirror_groups or any(self.dept_group.values()):
            self._groups_remove(
                (user_pk, self.dept_group.get(dept_pk))
                for user_pk, dept_pk in memberships.values_list("user__user_id", "department_id")
            )
        memberships.delete()
        if deactivate:
            self.user_model._default_manager.filter(pk__in=deactivate).update(is_active=False)
        if delete:
            self.user_model._default_manager.filter(pk__in=delete).delete()

    def remove_departments(self, rows: Sequence[LocalDepartment], *, pending: bool = False) -> None:
        """Mark departments gone from the directory as removed and drop their memberships (users stay)."""
        if not rows:
            return
        if pending:
            batch = _Batch()
            for row in rows:
                self.change(batch, SyncRunChange.ObjectType.DEPARTMENT, row.department_id,
                            SyncRunChange.Action.REMOVED, name=row.name, applied=False)
            self._record_only(batch)
            self.advance(len(rows))
            return
        for batch_rows in chunks(list(rows), self.batch_size):
            self._guarded(batch_rows, self._remove_departments,
                          lambda r: (SyncRunChange.ObjectType.DEPARTMENT, str(r.department_id), r.name))
            self.advance(len(batch_rows))

    def _remove_departments(self, rows: Sequence[LocalDepartment], batch: _Batch) -> None:
        for row in rows:
            self.change(batch, SyncRunChange.ObjectType.DEPARTMENT, row.department_id, SyncRunChange.Action.REMOVED,
                        name=row.name)
        if self.dry_run:
            return
        now = timezone.now()
        pks = [r.pk for r in rows]
        ExternalDepartment.objects.filter(pk__in=pks).update(is_removed=True, removed_at=now, updated_at=now)
        memberships = ExternalMembership.objects.filter(department_id__in=pks)
        if any(self.dept_group.get(pk) for pk in pks):
            self._groups_remove(
                (user_pk, self.dept_group.get(dept_pk))
                for user_pk, dept_pk in memberships.values_list("user__user_id", "department_id")
            )
        memberships.delete()


# -- event-facing functions (contract) --------------------------------------------------------------------


def _event_applier(source: SyncSource, run: SyncRun) -> Applier:
    applier = Applier(source, run)
    applier.load_departments()
    return applier


def apply_remote_objects(
    source: SyncSource,
    run: SyncRun,
    *,
    departments: Sequence[RemoteDepartment] = (),
    users: Sequence[RemoteUser] = (),
) -> dict[str, int]:
    """Create, update, move or reactivate exactly these objects; never remove anything else."""
    applier = _event_applier(source, run)
    local = load_local_state(source, user_keys=[u.key for u in users])
    plan = build_plan(
        {d.id: d for d in departments},
        {u.key: u for u in users},
        local,
        root_id=source.root_department_id,
        full=False,
        complete=False,
        is_active=applier.adapter.is_active_for_status,
    )
    applier.apply(plan)
    mark_seen(source, user_keys=[u.key for u in users], department_ids=[d.id for d in departments])
    return dict(applier.counters)


def mark_seen(source: SyncSource, *, user_keys: Sequence[str] = (), department_ids: Sequence[int] = ()) -> None:
    """Record that WeCom has just confirmed these objects exist, changed or not (approvals read it)."""
    now = timezone.now()
    for keys in chunks(sorted(set(user_keys)), app_settings.BATCH_SIZE):
        ExternalUser.objects.filter(source=source, userid_key__in=keys, is_removed=False).update(last_seen_at=now)
    for ids in chunks(sorted(set(department_ids)), app_settings.BATCH_SIZE):
        ExternalDepartment.objects.filter(source=source, department_id__in=ids, is_removed=False).update(
            last_seen_at=now
        )


def remove_users(source: SyncSource, run: SyncRun, userids: Sequence[str]) -> dict[str, int]:
    """Apply the source's removal policy to these users (no threshold: they were named one by one)."""
    applier = _event_applier(source, run)
    local = load_local_state(source, user_keys=[normalize_userid(u) for u in userids], with_memberships=False)
    applier.remove_users([u for u in local.users.values() if not u.is_removed])
    return dict(applier.counters)


def remove_departments(source: SyncSource, run: SyncRun, department_ids: Sequence[int]) -> dict[str, int]:
    """Mark these departments removed and delete their memberships; their users stay."""
    applier = _event_applier(source, run)
    wanted = {int(d) for d in department_ids}
    local = load_local_state(source, user_keys=[], with_memberships=False)
    rows = [d for d in local.departments.values() if d.department_id in wanted and not d.is_removed]
    applier.remove_departments(rows)
    return dict(applier.counters)


def rename_user(source: SyncSource, run: SyncRun, old_userid: str, new_userid: str,
                counters: dict[str, int] | None = None) -> bool:
    """Re-key a member from ``old_userid`` to ``new_userid``; the Django user stays the same.

    A conflict (``new_userid`` is mapped to someone else) is recorded as a failed change and counted as
    ``users_failed`` in ``counters`` when given.
    """
    old_key, new_key = normalize_userid(old_userid), normalize_userid(new_userid)
    ext = ExternalUser.objects.filter(source=source, userid_key=old_key).first()
    if ext is None or not new_key:
        return False
    applier = Applier(source, run)
    batch = _Batch()
    if new_key != old_key and ExternalUser.objects.filter(source=source, userid_key=new_key).exists():
        applier.change(batch, SyncRunChange.ObjectType.USER, new_userid, SyncRunChange.Action.FAILED, name=ext.name,
                       error=_("Cannot rename %(old)s: the userid %(new)s is already mapped.")
                       % {"old": old_userid, "new": new_userid}, applied=False)
        applier._record_only(batch)
        if counters is not None:
            counters["users_failed"] = counters.get("users_failed", 0) + 1
        return False
    if ext.userid == new_userid:
        return True
    with transaction.atomic():
        old = ext.userid
        ext.userid = new_userid
        ext.save(update_fields=["userid", "userid_key", "updated_at"])
        applier.change(batch, SyncRunChange.ObjectType.USER, new_userid, SyncRunChange.Action.UPDATED, name=ext.name,
                       fields={"userid": [old, new_userid]})
        applier._record_only(batch)
    return True


__all__ = [
    "Applier",
    "apply_remote_objects",
    "chunks",
    "load_contacts",
    "load_local_state",
    "remove_departments",
    "remove_users",
    "rename_user",
]
