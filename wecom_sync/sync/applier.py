"""The Applier: every writer composed, applying one whole plan in order."""

from __future__ import annotations

from .bulk import chunks
from .departments import DepartmentWriter
from .plan import (
    Plan,
)
from .removals import RemovalWriter


class Applier(RemovalWriter, DepartmentWriter):
    """Writes one plan (or one set of event objects) for one source into one run."""

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
        for updates in chunks(plan.user_updates, self.batch_size):
            self._guarded(updates, self._update_users, self._describe_op)
            self.advance(len(updates))
        for creates in chunks(plan.user_creates, self.batch_size):
            self._guarded(creates, self._create_users, self._describe_op)
            self.advance(len(creates))
        pending = hold_removals or self.dry_run
        self.remove_user_rows(plan.user_removals, pending=pending)
        self.remove_department_rows(plan.department_removals, pending=pending)

