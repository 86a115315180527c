"""Writer for the Django groups that mirror departments."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Q
from django.utils.translation import gettext as _

from ..models import ExternalDepartment, ExternalMembership
from .batch import BatchWriter
from .snapshot import RemoteDepartment


class GroupWriter(BatchWriter):
    """Creates, renames and fills the groups mirroring departments."""

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

    def _groups_add(self, pairs: Iterable[tuple[Any, int | None]]) -> None:
        wanted = {(u, g) for u, g in pairs if u and g}
        if not wanted or self.group_through is None:
            return
        src, dst = f"{self.group_src}_id", f"{self.group_dst}_id"
        self.group_through.objects.bulk_create(
            [self.group_through(**{src: u, dst: g}) for u, g in sorted(wanted)], ignore_conflicts=True
        )

    def _groups_remove(self, pairs: Iterable[tuple[Any, int | None]]) -> None:
        gone: set[tuple[Any, int]] = {(u, g) for u, g in pairs if u and g}
        if not gone or self.group_through is None:
            return
        query = Q()
        by_group: dict[int, list[int]] = {}
        for u, g in gone:
            by_group.setdefault(g, []).append(u)
        for g, users in by_group.items():
            query |= Q(**{f"{self.group_dst}_id": g, f"{self.group_src}_id__in": users})
        self.group_through.objects.filter(query).delete()

