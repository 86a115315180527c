"""Raw bulk inserts: rows straight into a table with one statement per chunk, outside the ORM's per-object path."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, models, router

T = TypeVar("T")

EXT_USER_FIELDS = ["userid", "userid_key", "name", "status", "raw", "digest", "is_removed", "removed_at", "updated_at",
                   "last_seen_at"]
DEPT_FIELDS = ["name", "name_en", "order", "leaders", "raw", "digest", "remote_parent_id", "is_removed", "removed_at",
               "updated_at", "last_seen_at"]
CHANGE_COLUMNS = ["run", "object_type", "external_id", "display_name", "action", "fields", "error", "applied",
                  "created_at"]
MEMBERSHIP_COLUMNS = ["user", "department", "order", "is_leader", "is_main"]


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Yield consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
    _execute_insert(connection, model, [cast(models.Field, model._meta.get_field(name)) for name in field_names], rows)


#: Field types (exact: a subclass may adapt its values) whose Python value is what the driver takes.
_PLAIN_TYPES = frozenset({
    models.CharField, models.EmailField, models.SlugField, models.URLField, models.TextField, models.BooleanField,
    models.IntegerField, models.BigIntegerField, models.SmallIntegerField, models.PositiveIntegerField,
    models.PositiveSmallIntegerField, models.PositiveBigIntegerField,
})
#: Field types that PostgreSQL's JSON-array path handles.
_UNNEST_TYPES = _PLAIN_TYPES | {models.DateTimeField, models.JSONField}

#: Least seconds between two progress UPDATEs of the run (the last batch always reports).

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
        found = by_key.get(value)
        if found is not None:
            found.pk = pk
            found._state.adding = False
            found._state.db = connection.alias


