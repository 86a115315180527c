"""The batch core shared by every writer: one transaction per batch, change rows, counters, progress."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from django.db import transaction
from django.utils import timezone

from ..adapter import DefaultWeComAdapter, get_adapter
from ..conf import app_settings
from ..models import ExternalDepartment, SyncRun, SyncRunChange, SyncSource
from ..signals import notify
from .bulk import CHANGE_COLUMNS, insert_rows
from .runlog import counter_key

logger = logging.getLogger(__name__)

T = TypeVar("T")


def clip(text: Any, limit: int = 255) -> str:
    """Return ``text`` as a string cut to ``limit`` characters (a change row's column width)."""
    return str(text or "")[:limit]


PROGRESS_EVERY = 1.0


class Batch:
    """What one batch produced: change rows and signals, kept until the batch commits."""

    def __init__(self) -> None:
        self.changes: list[tuple] = []
        self.signals: list[tuple[Any, dict[str, Any]]] = []
        self.counters: Counter[str] = Counter()
        self.now = timezone.now()


class BatchWriter:
    """The core every writer shares: batches in one transaction each, change rows, counters, progress."""

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
        batch: Batch,
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
                self.run.pk, object_type, clip(external_id, 64), clip(name), action, dict(fields or {}), error,
                (not self.dry_run) if applied is None else applied, batch.now,
            )
        )
        batch.counters[counter_key(object_type, action)] += 1

    def _guarded(self, items: Sequence[T], work: Callable[[Sequence[T], Batch], None],
                 describe: Callable[[T], tuple[str, str, str]]) -> None:
        """Run ``work`` on a batch in one transaction; on failure, retry item by item and record failures."""
        batch = Batch()
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
            failed = Batch()
            self.change(failed, object_type, external_id, SyncRunChange.Action.FAILED, name=name,
                        error=clip(f"{type(exc).__name__}: {exc}", 2000), applied=False)
            self._write_changes(failed.changes)
            self.counters.update(failed.counters)
            return
        self.counters.update(batch.counters)
        for signal, kwargs in batch.signals:
            notify(signal, type(self.adapter), source=self.source, run=self.run, **kwargs)

    @staticmethod
    def _write_changes(rows: Sequence[tuple]) -> None:
        insert_rows(SyncRunChange, CHANGE_COLUMNS, rows)

    def _record_only(self, batch_changes: Batch) -> None:
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

    def record_department_problems(self, problems: Sequence[tuple[int, str, str]]) -> None:
        """Record what the directory reports wrongly about departments (a parent cycle) as failed changes."""
        if not problems:
            return
        batch = Batch()
        for dept_id, name, message in problems:
            self.change(batch, SyncRunChange.ObjectType.DEPARTMENT, dept_id, SyncRunChange.Action.FAILED, name=name,
                        error=clip(message, 2000), applied=False)
        self._record_only(batch)

