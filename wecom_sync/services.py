"""Service functions: what every entry point (admin, tasks, command, API) calls. Synchronous and thin."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db.models import Max, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from .conf import app_settings
from .models import CallbackEvent, ExternalDepartment, ExternalUser, SyncRun, SyncRunChange, SyncSource
from .signals import notify, sync_finished
from .sync import lock, runner
from .sync.applier import Applier
from .sync.bulk import chunks
from .sync.local import load_local_state
from .sync.plan import LocalDepartment, LocalUser
from .sync.runlog import APPROVED_PREFIX, count_failures, finish_run
from .sync.snapshot import normalize_userid

logger = logging.getLogger(__name__)

USER_REMOVAL_ACTIONS = (SyncRunChange.Action.DEACTIVATED, SyncRunChange.Action.DELETED, SyncRunChange.Action.REMOVED)


#: A queued run older than this many STALE_RUN_SECONDS is considered lost.
QUEUED_STALE_FACTOR = 6


class RunStateError(ValueError):
    """The run is not in a state that allows this operation (e.g. approving a run that is not held)."""


def run_full_sync(
    source: SyncSource,
    *,
    dry_run: bool = False,
    force: bool = False,
    trigger: str = SyncRun.Trigger.API,
    run: SyncRun | None = None,
    progress: runner.ProgressCallback | None = None,
    requested_by: Any = None,
) -> SyncRun:
    """Run a full sync (or a dry run) of ``source`` now and return its finished SyncRun.

    A second run of the same source while one is running ends ``cancelled`` with a message; a disabled
    source ends ``cancelled`` too.
    """
    kind = SyncRun.Kind.DRY_RUN if dry_run else SyncRun.Kind.FULL
    if run is None:
        run = SyncRun.objects.create(
            source=source, kind=kind, trigger=trigger, force=force, status=SyncRun.Status.QUEUED,
            requested_by=requested_by,
        )
    else:
        run.kind = kind if dry_run else run.kind
        run.force = run.force or force
        run.save(update_fields=["kind", "force"])
    if not source.enabled:
        finish_run(run, SyncRun.Status.CANCELLED, _("This source is disabled; enable it to sync."),
                   fields=("status", "finished_at", "heartbeat_at", "message"))
        notify(sync_finished, SyncRun, run=run, source=source)
        return run
    return runner.execute(run, progress=progress)


def enqueue_full_sync(
    source: SyncSource,
    *,
    dry_run: bool = False,
    force: bool = False,
    trigger: str = SyncRun.Trigger.MANUAL,
    requested_by: Any = None,
) -> SyncRun:
    """Create a queued run and hand it to a Celery worker (``tasks.full_sync``); return the run.

    The run row is saved (autocommit) before the task is sent, so the worker finds it. If no Celery app
    is configured, the broker cannot be reached or no worker answers a ping, the run ends ``failed`` at
    once with the reason instead of waiting forever. With RUN_TASKS_IN_PROCESS it runs in a thread here.
    """
    from . import dispatch, tasks  # the task module sits above the services; imported here, when needed

    run = SyncRun.objects.create(
        source=source,
        kind=SyncRun.Kind.DRY_RUN if dry_run else SyncRun.Kind.FULL,
        trigger=trigger,
        force=force,
        status=SyncRun.Status.QUEUED,
        requested_by=requested_by if getattr(requested_by, "pk", None) else None,
    )
    if app_settings.RUN_TASKS_IN_PROCESS:
        dispatch.start_in_process(source.pk, run.pk, dry_run=dry_run, force=force, trigger=trigger)
        return run
    reason = dispatch.why_no_worker()
    if reason:
        SyncRun.objects.filter(pk=run.pk, status=SyncRun.Status.QUEUED).update(
            status=SyncRun.Status.FAILED, finished_at=timezone.now(), message=reason)
        run.refresh_from_db()
        return run
    try:
        result = tasks.full_sync.delay(source.pk, dry_run=dry_run, force=force, trigger=trigger, run_id=run.pk)
    except Exception as exc:  # noqa: BLE001 - kombu raises several types when the broker is down
        logger.warning("wecom_sync.run.enqueue_failed", extra={"run_id": run.pk, "error_type": type(exc).__name__})
        SyncRun.objects.filter(pk=run.pk, status=SyncRun.Status.QUEUED).update(
            status=SyncRun.Status.FAILED,
            finished_at=timezone.now(),
            message=_("The task queue could not be reached (%(type)s); the run was not started.")
            % {"type": type(exc).__name__},
        )
    else:
        if getattr(result, "id", None):
            SyncRun.objects.filter(pk=run.pk, task_id="").update(task_id=result.id)
    run.refresh_from_db()
    return run


def approve_run(run: SyncRun, user: Any = None) -> SyncRun:
    """Apply the removals a held run is waiting for, then close it as succeeded (or partial)."""
    run.refresh_from_db()
    if run.status != SyncRun.Status.HELD:
        raise RunStateError(_("Only a held run can be approved (this one is %(status)s).") % {
            "status": run.get_status_display()})
    source = run.source
    _claim_held_run(run, source)
    try:
        applier, requested, removed = _apply_held_removals(run, source)
        counters = dict(run.counters or {})
        for key, value in applier.counters.items():
            counters[APPROVED_PREFIX + key] = value
        counters[APPROVED_PREFIX + "skipped"] = requested - removed
        run.counters = counters
        run.decided_by = user if getattr(user, "pk", None) else None
        run.decided_at = timezone.now()
        who = str(user) if user is not None else _("a service call")
        status = SyncRun.Status.PARTIAL if count_failures(applier.counters) else SyncRun.Status.SUCCEEDED
        message = _("Approved by %(who)s: %(count)d removal(s) applied.") % {"who": who, "count": removed}
        finish_run(run, status, message, at=run.decided_at, fields=None)
        logger.info("wecom_sync.run.approved", extra={"run_id": run.pk, "removals": removed})
    except Exception:
        SyncRun.objects.filter(pk=run.pk, status=SyncRun.Status.RUNNING).update(status=SyncRun.Status.HELD)
        raise
    finally:
        lock.release(source, run)
    notify(sync_finished, SyncRun, run=run, source=source)
    return run


def _claim_held_run(run: SyncRun, source: SyncSource) -> None:
    """Move a held run to running and take the source's lock, or raise RunStateError (the run stays held)."""
    # Only one decision per held run: the first approve (or reject) to move it out of "held" wins.
    now = timezone.now()
    if not SyncRun.objects.filter(pk=run.pk, status=SyncRun.Status.HELD).update(
        status=SyncRun.Status.RUNNING, heartbeat_at=now
    ):
        raise RunStateError(_("This run was already approved or rejected."))
    run.status, run.heartbeat_at = SyncRun.Status.RUNNING, now
    if not lock.acquire(source, run):
        SyncRun.objects.filter(pk=run.pk, status=SyncRun.Status.RUNNING).update(status=SyncRun.Status.HELD)
        run.status = SyncRun.Status.HELD
        raise RunStateError(_("Another sync of this source is running; approve again when it has finished."))


def _apply_held_removals(run: SyncRun, source: SyncSource) -> tuple[Applier, int, int]:
    """Remove what the held run found gone and is still gone; return the applier, users asked and removed."""
    pending = run.changes.filter(applied=False)
    user_ids = list(
        pending.filter(object_type=SyncRunChange.ObjectType.USER, action__in=USER_REMOVAL_ACTIONS)
        .values_list("external_id", flat=True)
    )
    dept_ids = [
        int(x)
        for x in pending.filter(
            object_type=SyncRunChange.ObjectType.DEPARTMENT, action=SyncRunChange.Action.REMOVED
        ).values_list("external_id", flat=True)
    ]
    applier = Applier(source, run, track_progress=True)
    applier.load_departments()
    # Each pending removal is decided against the mirror as it is now: an object that WeCom confirmed
    # (a full sync or an event re-fetch, changed or not) after this run read the directory stays.
    snapshot_at = run.started_at or run.created_at
    decided_at = run.finished_at or timezone.now()
    not_seen_since = Q(last_seen_at__isnull=True) | Q(last_seen_at__lt=snapshot_at)
    rows, already = _users_still_gone(source, user_ids, not_seen_since, decided_at)
    depts = _departments_still_gone(source, dept_ids, not_seen_since, decided_at)
    applier.total = len(rows) + len(depts)
    applier.remove_user_rows(rows)
    applier.remove_department_rows(depts)
    _settle_pending_rows(
        run, pending, user_ids, {u.userid for u in rows}, dept_ids, {d.department_id for d in depts}, already
    )
    return applier, len(user_ids), len(rows)


def _users_still_gone(source: SyncSource, user_ids: list[str], not_seen_since: Q,
                      decided_at: Any) -> tuple[list[LocalUser], set[str]]:
    """Return the local rows of these users that are still gone, and the userids removed meanwhile."""
    rows: list[LocalUser] = []
    already: set[str] = set()  # removed meanwhile (a callback event): nothing left to do
    # In chunks: a large hold must stay approvable on SQLite, whose queries take at most 32,766 parameters.
    for keys in chunks(sorted({normalize_userid(u) for u in user_ids}), app_settings.BATCH_SIZE):
        local = load_local_state(source, user_keys=keys, with_memberships=False)
        still_gone = set(
            ExternalUser.objects.filter(
                not_seen_since, source=source, userid_key__in=keys, is_removed=False, updated_at__lte=decided_at,
            ).values_list("pk", flat=True)
        )
        rows.extend(u for u in local.users.values() if u.pk in still_gone)
        already.update(u.userid for u in local.users.values() if u.is_removed)
    return rows, already


def _departments_still_gone(source: SyncSource, dept_ids: list[int], not_seen_since: Q,
                            decided_at: Any) -> list[LocalDepartment]:
    """Return the local rows of these departments that are still gone."""
    gone_depts = set(
        ExternalDepartment.objects.filter(
            not_seen_since, source=source, department_id__in=dept_ids, updated_at__lte=decided_at
        ).values_list("department_id", flat=True)
    ) if dept_ids else set()
    return [
        d
        for d in load_local_state(source, user_keys=[], with_memberships=False).departments.values()
        if d.department_id in gone_depts and not d.is_removed
    ]


def _settle_pending_rows(run: SyncRun, pending: Any, user_ids: list[str], removed_users: set[str],
                         dept_ids: list[int], removed_depts: set[int], already: set[str]) -> None:
    """Leave one change row per object after an approval: the approval's own row replaces the pending one;
    an object that came back (or was removed meanwhile) keeps its row, now ``skipped``."""
    came_back = _("WeCom confirmed it again after this run read the directory: not removed.")
    removed_meanwhile = _("Already removed before the approval (by a callback event).")
    users = pending.filter(object_type=SyncRunChange.ObjectType.USER, action__in=USER_REMOVAL_ACTIONS)
    for batch in chunks(sorted(set(user_ids)), app_settings.BATCH_SIZE):
        done = [u for u in batch if u in removed_users]
        gone = [u for u in batch if u not in removed_users and u in already]
        kept = [u for u in batch if u not in removed_users and u not in already]
        if done:
            users.filter(external_id__in=done).delete()
        if gone:
            users.filter(external_id__in=gone).update(action=SyncRunChange.Action.SKIPPED, error=removed_meanwhile)
        if kept:
            users.filter(external_id__in=kept).update(
                action=SyncRunChange.Action.SKIPPED, error=came_back
            )
    depts = pending.filter(object_type=SyncRunChange.ObjectType.DEPARTMENT, action=SyncRunChange.Action.REMOVED)
    done_depts = [str(d) for d in dept_ids if d in removed_depts]
    kept_depts = [str(d) for d in dept_ids if d not in removed_depts]
    if done_depts:
        depts.filter(external_id__in=done_depts).delete()
    if kept_depts:
        depts.filter(external_id__in=kept_depts).update(
            action=SyncRunChange.Action.SKIPPED, error=came_back
        )


def reject_run(run: SyncRun, user: Any = None) -> SyncRun:
    """Close a held run as rejected, without applying its pending removals."""
    run.refresh_from_db()
    if run.status != SyncRun.Status.HELD:
        raise RunStateError(_("Only a held run can be rejected (this one is %(status)s).") % {
            "status": run.get_status_display()})
    run.status = SyncRun.Status.REJECTED
    run.decided_by = user if getattr(user, "pk", None) else None
    run.decided_at = timezone.now()
    run.finished_at = run.finished_at or run.decided_at
    who = str(user) if user is not None else _("a service call")
    run.message = (run.message + "\n" + _("Rejected by %(who)s: nothing was removed.") % {"who": who}).strip()
    # Conditional, so a concurrent approval (which moved the run out of "held") is never overwritten.
    if not SyncRun.objects.filter(pk=run.pk, status=SyncRun.Status.HELD).update(
        status=run.status, decided_by=run.decided_by, decided_at=run.decided_at, finished_at=run.finished_at,
        message=run.message,
    ):
        run.refresh_from_db()
        raise RunStateError(_("This run was already approved or rejected."))
    logger.info("wecom_sync.run.rejected", extra={"run_id": run.pk})
    notify(sync_finished, SyncRun, run=run, source=run.source)
    return run


def close_stale_runs() -> int:
    """Close as failed every running run without a heartbeat for STALE_RUN_SECONDS (and every run queued
    for six times as long); free their locks. Returns how many were closed."""
    limit = timezone.now() - timedelta(seconds=app_settings.STALE_RUN_SECONDS)
    stale = SyncRun.objects.filter(status=SyncRun.Status.RUNNING).filter(
        Q(heartbeat_at__lt=limit) | Q(heartbeat_at__isnull=True, started_at__lt=limit)
        | Q(heartbeat_at__isnull=True, started_at__isnull=True, created_at__lt=limit)
    )
    closed = 0
    for run in stale:
        closed += int(lock.close_stale(run))
    # A queued run that no worker picked up for a long time (lost message, broker wiped) would block its
    # source's schedule forever: close it too.
    never_started = SyncRun.objects.filter(
        status=SyncRun.Status.QUEUED,
        created_at__lt=timezone.now() - timedelta(seconds=QUEUED_STALE_FACTOR * app_settings.STALE_RUN_SECONDS),
    )
    for run in never_started:
        closed += int(lock.close_stale(run, _("No worker started this run; it was closed so that syncs can go on.")))
    return closed


def due_sources(now: Any = None) -> list[SyncSource]:
    """Enabled sources with a schedule whose last full sync is older than their interval and none queued."""
    now = now or timezone.now()
    sources = SyncSource.objects.filter(enabled=True, sync_interval_minutes__gt=0).annotate(
        last_run=Max("runs__created_at", filter=Q(runs__kind=SyncRun.Kind.FULL))
    )
    due: list[SyncSource] = []
    busy = set(
        SyncRun.objects.filter(
            status__in=[SyncRun.Status.QUEUED, SyncRun.Status.RUNNING], kind=SyncRun.Kind.FULL
        ).values_list("source_id", flat=True)
    )
    for source in sources:
        if source.pk in busy:
            continue
        if source.last_run is None or source.last_run + timedelta(minutes=source.sync_interval_minutes) <= now:
            due.append(source)
    return due


def run_scheduled_syncs(enqueue: Callable[[SyncRun], Any] | None = None) -> list[SyncRun]:
    """Start a full sync of every source whose schedule is due.

    Each gets a queued run (trigger "schedule"); ``enqueue(run)`` hands it to a worker (the Celery task
    does), otherwise it runs here, synchronously.
    """
    runs = []
    for source in due_sources():
        run = SyncRun.objects.create(
            source=source, kind=SyncRun.Kind.FULL, trigger=SyncRun.Trigger.SCHEDULE, status=SyncRun.Status.QUEUED
        )
        if enqueue is not None:
            enqueue(run)
        else:
            run = run_full_sync(source, trigger=SyncRun.Trigger.SCHEDULE, run=run)
        runs.append(run)
    return runs


def _delete_in_batches(queryset: Any, size: int) -> int:
    """Delete the rows of ``queryset`` a batch of primary keys at a time (short transactions, bounded memory)."""
    deleted = 0
    model = queryset.model
    while True:
        pks = list(queryset.values_list("pk", flat=True)[:size])
        if not pks:
            return deleted
        count, _per_model = model._default_manager.filter(pk__in=pks).delete()
        deleted += count


def purge_old_records(now: Any = None) -> dict[str, int]:
    """Delete applied or ignored callback events older than EVENT_RETENTION_DAYS and the change rows of runs
    finished more than RUN_CHANGES_RETENTION_DAYS ago. Failed and pending events, held runs and every run's
    own row (its counters) are kept. Returns how many rows of each kind were deleted."""
    now = now or timezone.now()
    size = app_settings.BATCH_SIZE
    events = CallbackEvent.objects.filter(
        status__in=[CallbackEvent.Status.APPLIED, CallbackEvent.Status.IGNORED],
        received_at__lt=now - timedelta(days=app_settings.EVENT_RETENTION_DAYS),
    )
    old_runs = SyncRun.objects.filter(
        status__in=SyncRun.FINISHED, finished_at__lt=now - timedelta(days=app_settings.RUN_CHANGES_RETENTION_DAYS)
    )
    result = {
        "events": _delete_in_batches(events.order_by(), size),
        "run_changes": _delete_in_batches(SyncRunChange.objects.filter(run__in=old_runs.values("pk")).order_by(),
                                          size),
    }
    logger.info("wecom_sync.retention.purged", extra=result)
    return result


def link_account(external_user: ExternalUser, user: Any) -> ExternalUser:
    """Link a WeCom member to an existing Django account by an admin's decision (account_origin "manual").

    The sync then treats the account as not its own: it never changes its login field or email (unless
    ``LINKED_ACCOUNT_FIELDS`` says so) and never deletes it.
    """
    external_user.user = user
    external_user.account_origin = ExternalUser.AccountOrigin.MANUAL
    external_user.save(update_fields=["user", "account_origin", "updated_at"])
    logger.info("wecom_sync.user.linked_by_hand", extra={"external_user_id": external_user.pk, "user_id": user.pk})
    return external_user


__all__ = [
    "RunStateError",
    "approve_run",
    "close_stale_runs",
    "due_sources",
    "enqueue_full_sync",
    "link_account",
    "purge_old_records",
    "reject_run",
    "run_full_sync",
    "run_scheduled_syncs",
]
