"""Writer for removals: users and departments gone from the directory, under the source's policy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from ..models import ExternalDepartment, ExternalMembership, ExternalUser, SyncRunChange, SyncSource
from ..signals import user_deactivated
from .batch import Batch
from .bulk import chunks
from .plan import (
    LocalDepartment,
    LocalUser,
)
from .users import UserWriter

REMOVAL_ACTIONS: dict[str, str] = {
    SyncSource.RemovalPolicy.DEACTIVATE: SyncRunChange.Action.DEACTIVATED,
    SyncSource.RemovalPolicy.DELETE: SyncRunChange.Action.DELETED,
    SyncSource.RemovalPolicy.IGNORE: SyncRunChange.Action.REMOVED,
}


def _mark_removed(model: type[ExternalUser] | type[ExternalDepartment], pks: list[int]) -> None:
    """Mark these mirror rows removed now (they stay, so a comeback finds them)."""
    now = timezone.now()
    model._default_manager.filter(pk__in=pks).update(is_removed=True, removed_at=now, updated_at=now)


class RemovalWriter(UserWriter):
    """Applies the removal policy to users and departments gone from the directory."""

    def remove_user_rows(self, rows: Sequence[LocalUser], *, pending: bool = False) -> None:
        """Apply the source's removal policy to users gone from the directory (or record them as pending)."""
        action = REMOVAL_ACTIONS.get(self.source.removal_policy, SyncRunChange.Action.DEACTIVATED)
        for batch_rows in chunks(list(rows), self.batch_size):
            if pending:
                batch = Batch()
                for row in batch_rows:
                    self.change(batch, SyncRunChange.ObjectType.USER, row.userid, action, applied=False)
                batch.counters = Counter({"pending_removals": len(batch_rows)})
                self._record_only(batch)
            else:
                self._guarded(batch_rows, self._remove_user_batch, self._describe_local_user)
            self.advance(len(batch_rows))

    @staticmethod
    def _describe_local_user(row: LocalUser) -> tuple[str, str, str]:
        return SyncRunChange.ObjectType.USER, row.userid, ""

    def _remove_user_batch(self, rows: Sequence[LocalUser], batch: Batch) -> None:
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
        ext_pks = [r.pk for r in rows]
        _mark_removed(ExternalUser, ext_pks)
        self._drop_memberships(ExternalMembership.objects.filter(user_id__in=ext_pks),
                               ungroup=self.mirror_groups or any(self.dept_group.values()))
        if deactivate:
            self.user_model._default_manager.filter(pk__in=deactivate).update(is_active=False)
        if delete:
            self.user_model._default_manager.filter(pk__in=delete).delete()

    def remove_department_rows(self, rows: Sequence[LocalDepartment], *, pending: bool = False) -> None:
        """Mark departments gone from the directory as removed and drop their memberships (users stay)."""
        if not rows:
            return
        if pending:
            batch = Batch()
            for row in rows:
                self.change(batch, SyncRunChange.ObjectType.DEPARTMENT, row.department_id,
                            SyncRunChange.Action.REMOVED, name=row.name, applied=False)
            self._record_only(batch)
            self.advance(len(rows))
            return
        for batch_rows in chunks(list(rows), self.batch_size):
            self._guarded(batch_rows, self._remove_department_batch,
                          lambda r: (SyncRunChange.ObjectType.DEPARTMENT, str(r.department_id), r.name))
            self.advance(len(batch_rows))

    def _remove_department_batch(self, rows: Sequence[LocalDepartment], batch: Batch) -> None:
        for row in rows:
            self.change(batch, SyncRunChange.ObjectType.DEPARTMENT, row.department_id, SyncRunChange.Action.REMOVED,
                        name=row.name)
        if self.dry_run:
            return
        pks = [r.pk for r in rows]
        _mark_removed(ExternalDepartment, pks)
        self._drop_memberships(ExternalMembership.objects.filter(department_id__in=pks),
                               ungroup=any(self.dept_group.get(pk) for pk in pks))

    def _drop_memberships(self, memberships: QuerySet[ExternalMembership], *, ungroup: bool) -> None:
        """Delete these memberships, after the mirrored-group links they gave when ``ungroup``."""
        if ungroup:
            self._groups_remove(
                (user_pk, self.dept_group.get(dept_pk))
                for user_pk, dept_pk in memberships.values_list("user__user_id", "department_id")
            )
        memberships.delete()


