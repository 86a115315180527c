"""Writer for departments: create, update, move, set parents."""

from __future__ import annotations

from collections.abc import Sequence

from django.utils import timezone

from ..models import ExternalDepartment, SyncRunChange
from .batch import Batch
from .bulk import DEPT_FIELDS, chunks, insert_instances
from .groups import GroupWriter
from .plan import (
    DepartmentCreate,
    DepartmentOp,
    DepartmentUpdate,
)


class DepartmentWriter(GroupWriter):
    """Creates, updates and moves the source's departments."""

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

    def _write_departments(self, ops: Sequence[DepartmentOp], batch: Batch) -> None:
        for op in ops:
            self.change(batch, SyncRunChange.ObjectType.DEPARTMENT, op.department_id, op.action,
                        name=op.remote.name, fields=op.fields)
        if self.dry_run:
            return
        # Parents first, level by level, so that most parents are known when a department is inserted.
        pending = [op for op in ops if isinstance(op, DepartmentCreate) and op.department_id not in self.dept_pk]
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
        updates = [op for op in ops if isinstance(op, DepartmentUpdate)]
        existing = [self._dept_row(op, self.dept_pk[op.department_id]) for op in updates]
        if existing:
            ExternalDepartment.objects.bulk_update(existing, DEPT_FIELDS)
        if self.mirror_groups:
            renames = []
            for op in ops:
                group_id = self.dept_group.get(self.dept_pk.get(op.department_id, 0))
                if group_id and isinstance(op, DepartmentUpdate) and "name" in op.fields:
                    renames.append((group_id, op.remote))
            self._rename_groups(renames)

    def _set_parents(self, ops: Sequence[DepartmentOp], batch: Batch) -> None:
        rows = []
        for op in ops:
            if op.department_id in self.parent_done or (isinstance(op, DepartmentUpdate) and "parent" not in op.fields):
                continue
            pk = self.dept_pk.get(op.department_id)
            if pk is None:
                continue
            parent_pk = self.dept_pk.get(op.parent_id) if op.parent_id is not None else None
            rows.append(ExternalDepartment(pk=pk, parent_id=parent_pk))
        if rows:
            ExternalDepartment.objects.bulk_update(rows, ["parent"], batch_size=self.batch_size)

