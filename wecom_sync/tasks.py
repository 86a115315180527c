"""Celery tasks of wecom_sync: thin wrappers that load by primary key and call one service function."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.utils import timezone

from . import events, services
from .models import CallbackEvent, SyncRun, SyncSource

logger = logging.getLogger(__name__)


@shared_task(name="wecom_sync.tasks.full_sync", bind=True, ignore_result=True)
def full_sync(
    self,  # noqa: ANN001 - the bound Celery task
    source_id: int,
    dry_run: bool = False,
    force: bool = False,
    trigger: str = SyncRun.Trigger.API,
    run_id: int | None = None,
) -> int | None:
    """Run a full sync (or dry run) of one source; return the run id, or None if the source is gone."""
    source = SyncSource.objects.filter(pk=source_id).first()
    if source is None:
        return None
    run = SyncRun.objects.filter(pk=run_id, source=source).first() if run_id else None
    if run is not None and run.is_finished:
        return run.pk
    if run is not None and self.request.id:
        run.task_id = self.request.id
        run.save(update_fields=["task_id"])
    return services.run_full_sync(source, dry_run=dry_run, force=force, trigger=trigger, run=run).pk


@shared_task(name="wecom_sync.tasks.run_scheduled_syncs", ignore_result=True)
def run_scheduled_syncs() -> int:
    """Enqueue a full sync of every source whose schedule is due (periodic, every minute)."""

    def enqueue(run: SyncRun) -> None:
        full_sync.delay(run.source_id, trigger=SyncRun.Trigger.SCHEDULE, run_id=run.pk)

    return len(services.run_scheduled_syncs(enqueue=enqueue))


@shared_task(name="wecom_sync.tasks.close_stale_runs", ignore_result=True)
def close_stale_runs() -> int:
    """Close runs whose worker died (no heartbeat) as failed and free their locks (periodic)."""
    return services.close_stale_runs()


#: When even recording a failure failed (e.g. SQLite "database is locked"), try the event again this much later.
UNRECORDED_RETRY_SECONDS = 30


@shared_task(name="wecom_sync.tasks.process_callback_event", bind=True, ignore_result=True)
def process_callback_event(self, event_id: int) -> str | None:  # noqa: ANN001 - the bound Celery task
    """Process one stored callback event (idempotent; failures are recorded on the event and retried).

    An event left pending (a failed attempt, or deferred while a full sync runs) is sent again for its
    next attempt, so it is retried without beat; the periodic requeue stays a safety net.
    """
    try:
        status = events.process_event(event_id)
    except Exception:
        schedule_event_retry(self, event_id, UNRECORDED_RETRY_SECONDS)
        raise
    if status == CallbackEvent.Status.PENDING:
        due = CallbackEvent.objects.filter(pk=event_id).values_list("next_attempt_at", flat=True).first()
        delay = (due - timezone.now()).total_seconds() if due else UNRECORDED_RETRY_SECONDS
        schedule_event_retry(self, event_id, delay)
    return status


def schedule_event_retry(task: Any, event_id: int, delay: float) -> bool:
    """Send the event again in ``delay`` seconds (not when tasks run eagerly: that would loop at once)."""
    if task.request.is_eager or task.app.conf.task_always_eager:
        return False
    try:
        process_callback_event.apply_async((event_id,), countdown=max(1, round(delay)))
    except Exception as exc:  # noqa: BLE001 - the broker is down: requeue_pending_events sends it later
        logger.warning("wecom_sync.events.retry_not_sent", extra={"event_id": event_id,
                                                                   "error_type": type(exc).__name__})
        return False
    logger.info("wecom_sync.events.retry_scheduled", extra={"event_id": event_id, "countdown": round(delay)})
    return True


@shared_task(name="wecom_sync.tasks.requeue_pending_events", ignore_result=True)
def requeue_pending_events() -> int:
    """Re-enqueue pending events that were never sent or are due a retry (periodic, every minute)."""
    return events.requeue_pending_events()


@shared_task(name="wecom_sync.tasks.purge_old_records", ignore_result=True)
def purge_old_records() -> dict[str, int]:
    """Delete old applied/ignored events and old runs' change rows (periodic, hourly; see the retention settings)."""
    return services.purge_old_records()


@shared_task(name="wecom_sync.tasks.send_message", ignore_result=True)
def send_message(
    source_id: int,
    *,
    user_ids: list[int] | None = None,
    userids: list[str] | None = None,
    department_ids: list[int] | None = None,
    tag_ids: list[int] | None = None,
    text: str | None = None,
    markdown: str | None = None,
    textcard: dict | None = None,
) -> dict | None:
    """Send an app message in the background (Django user pks, userids, department and tag ids); return its
    summary, or None if the source is gone."""
    from django.contrib.auth import get_user_model

    from .messages import send_message as send

    source = SyncSource.objects.filter(pk=source_id).first()
    if source is None:
        return None
    users = [*get_user_model()._default_manager.filter(pk__in=user_ids or ()), *(userids or ())]
    result = send(source, users=users, departments=department_ids or (), tags=tag_ids or (), text=text,
                  markdown=markdown, textcard=textcard)
    return result.as_dict()
