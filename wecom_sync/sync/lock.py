"""One run per source at a time, across processes and machines, through the database.

The lock is the ``SyncSource.lock_run`` column, taken with a conditional UPDATE (``... WHERE lock_run IS
NULL``): the database makes exactly one of two concurrent UPDATEs match, on SQLite and PostgreSQL alike. A
lock held by a run that has finished, or whose heartbeat is older than ``STALE_RUN_SECONDS``, is taken over
(and a stale running run is closed as failed first).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.utils import timezone
from django.utils.translation import gettext as _

from ..conf import app_settings
from ..models import SyncRun, SyncSource

logger = logging.getLogger(__name__)


def is_stale(run: SyncRun, now=None) -> bool:  # noqa: ANN001 - datetime | None
    """Whether a running run has given no sign of life for STALE_RUN_SECONDS."""
    now = now or timezone.now()
    seen = run.heartbeat_at or run.started_at or run.created_at
    return seen is None or seen < now - timedelta(seconds=app_settings.STALE_RUN_SECONDS)


def close_stale(run: SyncRun, message: str | None = None) -> bool:
    """Close a run whose worker died as failed; return whether this call closed it."""
    now = timezone.now()
    text = message or _("No heartbeat for %(seconds)d seconds: the worker probably died.") % {
        "seconds": app_settings.STALE_RUN_SECONDS
    }
    closed = SyncRun.objects.filter(pk=run.pk, status__in=[SyncRun.Status.RUNNING, SyncRun.Status.QUEUED]).update(
        status=SyncRun.Status.FAILED, finished_at=now, message=text
    )
    SyncSource.objects.filter(pk=run.source_id, lock_run=run.pk).update(lock_run=None, locked_at=None)
    if closed:
        logger.warning("wecom_sync.run.stale_closed", extra={"run_id": run.pk, "source_id": run.source_id})
    return bool(closed)


def acquire(source: SyncSource, run: SyncRun) -> bool:
    """Take the source's lock for ``run``; return False when another live run holds it."""
    now = timezone.now()
    # A lock already held by this very run is not free: a duplicate task of a running run must not run too.
    if SyncSource.objects.filter(pk=source.pk, lock_run__isnull=True).update(lock_run=run.pk, locked_at=now):
        return True
    holder_id = SyncSource.objects.filter(pk=source.pk).values_list("lock_run", flat=True).first()
    if holder_id is None:
        # Released between our two queries (or the source is gone): try once more.
        return bool(
            SyncSource.objects.filter(pk=source.pk, lock_run__isnull=True).update(lock_run=run.pk, locked_at=now)
        )
    holder = SyncRun.objects.filter(pk=holder_id).first()
    # A holder that is not finished is alive unless stale: it may still be "queued" for a moment after
    # taking the lock (its status is saved next), or "held" while its removals are being approved.
    alive = (SyncRun.Status.QUEUED, SyncRun.Status.RUNNING, SyncRun.Status.HELD)
    if holder is not None and holder.status in alive and not is_stale(holder, now):
        return False
    if holder is not None and holder.status in (SyncRun.Status.RUNNING, SyncRun.Status.QUEUED):
        close_stale(holder)
    return bool(
        SyncSource.objects.filter(pk=source.pk, lock_run=holder_id).update(lock_run=run.pk, locked_at=now)
        or SyncSource.objects.filter(pk=source.pk, lock_run__isnull=True).update(lock_run=run.pk, locked_at=now)
    )


def release(source: SyncSource, run: SyncRun) -> None:
    """Release the source's lock if ``run`` holds it."""
    SyncSource.objects.filter(pk=source.pk, lock_run=run.pk).update(lock_run=None, locked_at=None)


def holder(source: SyncSource) -> int | None:
    """Return the id of the run holding the source's lock, if any."""
    return SyncSource.objects.filter(pk=source.pk).values_list("lock_run", flat=True).first()
