"""Writer for members: external users, their Django users, memberships and mirrored groups."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from ..adapter import LinkError, LinkRefused
from ..models import ExternalMembership, ExternalUser, SyncRunChange
from ..signals import notify, user_created, user_deactivated, user_reactivated, user_updated
from .batch import Batch, clip
from .bulk import EXT_USER_FIELDS, MEMBERSHIP_COLUMNS, chunks, insert_instances, insert_rows
from .groups import GroupWriter
from .plan import (
    PLACEMENT_KEYS,
    UserCreate,
    UserOp,
    UserUpdate,
    diff_fields,
    refine_user_action,
)
from .snapshot import RemoteUser


@dataclass
class _UserUpdates:
    """What one batch of member updates has read, and stages to write once every member is decided."""

    found: dict[str, ExternalUser]  # member key -> mirror row
    users: dict[Any, Any]  # Django user pk -> user
    kept: set[Any]  # Django users kept active by another mapping
    orphan_keys: set[str]  # members whose Django user is gone: provisioned anew
    provisioned: dict[str, tuple[Any, bool] | Exception]
    ext_updates: list[ExternalUser] = field(default_factory=list)
    user_updates: list[tuple[Any, set[str]]] = field(default_factory=list)
    adds: list[tuple] = field(default_factory=list)
    removes: Q = field(default_factory=Q)
    group_add: list[tuple[Any, Any]] = field(default_factory=list)
    group_remove: list[tuple[Any, Any]] = field(default_factory=list)


class UserWriter(GroupWriter):
    """Creates and updates members and their Django users."""

    @staticmethod
    def _describe_op(op: UserOp) -> tuple[str, str, str]:
        return SyncRunChange.ObjectType.USER, op.remote.userid, op.remote.name

    def _provision(
        self, remotes: Sequence[RemoteUser], batch: Batch
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
            batch = Batch()
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

    def _create_users(self, ops: Sequence[UserCreate], batch: Batch) -> None:
        provisioned = self._provision([op.remote for op in ops], batch)
        rows: list[tuple[UserCreate, Any, bool]] = []
        for op in ops:
            result = provisioned.get(op.key)
            if isinstance(result, LinkRefused):
                self.change(batch, SyncRunChange.ObjectType.USER, op.remote.userid, SyncRunChange.Action.SKIPPED,
                            name=op.remote.name, error=clip(result.message, 2000), applied=False)
                continue
            if isinstance(result, Exception) or result is None:
                message = result.message if isinstance(result, LinkError) else f"{type(result).__name__}: {result}"
                self.change(batch, SyncRunChange.ObjectType.USER, op.remote.userid, SyncRunChange.Action.FAILED,
                            name=op.remote.name, error=clip(message, 2000), applied=False)
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

    def _update_users(self, ops: Sequence[UserUpdate], batch: Batch) -> None:
        work = self._prepare_updates(ops, batch)
        for op in ops:
            self._update_user(op, work, batch)
        if not self.dry_run:
            self._write_updates(work)

    def _prepare_updates(self, ops: Sequence[UserUpdate], batch: Batch) -> _UserUpdates:
        """Read the batch's mirror rows and Django users; provision the members whose account is gone."""
        ext_rows = {
            e.pk: e
            for e in ExternalUser.objects.filter(pk__in=[op.local.pk for op in ops]).only(
                "pk", "userid", "userid_key", "raw", "user_id", "name", "status", "is_removed", "source_id",
                "account_origin",
            )
        }
        found = {op.key: ext_rows[op.local.pk] for op in ops if op.local.pk in ext_rows}
        users = {}
        if not self.dry_run:
            user_ids = [e.user_id for e in ext_rows.values() if e.user_id]
            users = {u.pk: u for u in self.user_model._default_manager.filter(pk__in=user_ids)}
        kept = self.kept_active_elsewhere(
            found[op.key].user_id for op in ops
            if op.key in found and not self.adapter.is_active_for_status(op.remote.status)
        ) if not self.dry_run else set()
        orphans = [op for op in ops if op.key in found and found[op.key].user_id is None]
        provisioned = self._provision([op.remote for op in orphans], batch) if orphans else {}
        return _UserUpdates(found, users, kept, {op.key for op in orphans}, provisioned)

    def _update_user(self, op: UserUpdate, work: _UserUpdates, batch: Batch) -> None:
        """Decide one member's update: record its change and stage its writes in ``work``."""
        ext = work.found.get(op.key)
        if ext is None:
            self.change(batch, SyncRunChange.ObjectType.USER, op.remote.userid, SyncRunChange.Action.FAILED,
                        name=op.remote.name, error=_("The local record disappeared during the run."),
                        applied=False)
            return
        fields: dict[str, Any] = diff_fields(ext.raw or {}, op.remote.raw) if op.content_changed else {}
        if op.renamed_from is not None or ext.userid != op.remote.userid:
            fields["userid"] = [ext.userid, op.remote.userid]
        if (op.kept and not op.memberships_changed and op.action == "updated" and set(fields) <= PLACEMENT_KEYS
                and ext.user_id is not None):
            # A partial fetch saw only some of the member's departments: nothing of theirs changed.
            return
        action = refine_user_action(op.action, fields)
        if op.memberships_changed:
            fields["memberships"] = {"added": list(op.added), "removed": list(op.removed),
                                     "changed": list(op.changed)}
        resolved = self._updated_django_user(op, ext, work, batch, fields, action)
        if resolved is None:
            return
        user, django_fields, action = resolved
        self.change(batch, SyncRunChange.ObjectType.USER, op.remote.userid, action, name=op.remote.name,
                    fields=fields)
        if self.dry_run:
            return
        self._stage_external_user(op, ext, work, user)
        self._stage_memberships(op, ext, work, user)
        if action == SyncRunChange.Action.DEACTIVATED and user is not None:
            batch.signals.append((user_deactivated, {"user": user, "external_user": ext}))
        elif action == SyncRunChange.Action.REACTIVATED and user is not None:
            batch.signals.append((user_reactivated, {"user": user, "external_user": ext}))
        elif django_fields and user is not None:
            batch.signals.append((user_updated, {"user": user, "external_user": ext}))

    def _updated_django_user(
        self, op: UserUpdate, ext: ExternalUser, work: _UserUpdates, batch: Batch,
        fields: dict[str, Any], action: str,
    ) -> tuple[Any, set[str], str] | None:
        """Return the member's Django user (updated, or provisioned anew), its changed fields and the final
        action; None when a new account could not be provisioned (recorded as a change)."""
        if op.key in work.orphan_keys:
            # The Django user was deleted (removal policy "delete") or unlinked: provision a new one.
            result = work.provisioned.get(op.key)
            if not isinstance(result, tuple):
                message = result.message if isinstance(result, LinkError) else str(result)
                refused = isinstance(result, LinkRefused)
                self.change(batch, SyncRunChange.ObjectType.USER, op.remote.userid,
                            SyncRunChange.Action.SKIPPED if refused else SyncRunChange.Action.FAILED,
                            name=op.remote.name, error=clip(message, 2000), applied=False)
                return None
            user = result[0]
            fields["username"] = [None, getattr(user, self.user_model.USERNAME_FIELD, "")]
            return user, set(), action
        django_fields: set[str] = set()
        user = work.users.get(ext.user_id) if ext.user_id else None
        if user is not None:
            if op.content_changed or op.local.is_removed:
                django_fields = self._populate(user, op.remote, ext.account_origin)
            django_fields |= self._set_active(user, op.remote, work.kept)
            if django_fields:
                work.user_updates.append((user, django_fields))
            if action == SyncRunChange.Action.DEACTIVATED and user.is_active:
                # The adapter kept the account active (a superuser): the mirror is updated, the
                # Django user is not deactivated, and no deactivation is reported.
                action = SyncRunChange.Action.UPDATED
        return user, django_fields, action

    def _stage_external_user(self, op: UserUpdate, ext: ExternalUser, work: _UserUpdates, user: Any) -> None:
        """Copy the remote member onto its mirror row (and its new account, when relinked)."""
        relink = op.key in work.orphan_keys
        if not (op.content_changed or op.local.is_removed or relink):
            return
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
            provisioned = work.provisioned[op.key]
            created = isinstance(provisioned, tuple) and provisioned[1]
            ext.user_id = user.pk
            ext.account_origin = ExternalUser.AccountOrigin.CREATED if created else ExternalUser.AccountOrigin.LINKED
        work.ext_updates.append(ext)

    def _stage_memberships(self, op: UserUpdate, ext: ExternalUser, work: _UserUpdates, user: Any) -> None:
        user_pk = user.pk if user is not None else None
        if op.local.is_removed:
            # a member who comes back gets every membership again (removal deleted them)
            work.removes |= Q(user_id=ext.pk)
            self._write_memberships(ext.pk, op, work.adds, Q(), work.group_add, [], user_pk, all_added=True)
        else:
            work.removes = self._write_memberships(ext.pk, op, work.adds, work.removes, work.group_add,
                                                   work.group_remove, user_pk)

    def _write_updates(self, work: _UserUpdates) -> None:
        """Write what a batch of updates staged: mirror rows, Django users, memberships, groups."""
        if work.ext_updates:
            fields_to_save = EXT_USER_FIELDS + (["user", "account_origin"] if work.orphan_keys else [])
            ExternalUser.objects.bulk_update(work.ext_updates, fields_to_save)
        self._save_users(work.user_updates)
        if work.removes:
            ExternalMembership.objects.filter(work.removes).delete()
        if work.adds:
            insert_rows(ExternalMembership, MEMBERSHIP_COLUMNS, work.adds)
        if self.mirror_groups:
            self._groups_remove(work.group_remove)
            self._groups_add(work.group_add)

