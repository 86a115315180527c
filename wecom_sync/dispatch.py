"""Where a sync runs: a Celery worker (checked before sending), or a thread of the web process.

``WECOM_SYNC["RUN_TASKS_IN_PROCESS"]`` is for sites without a broker: a sync then runs in a daemon thread
of the process that started it (the run page follows its progress as usual) and callback events are
processed right after their request. Otherwise a sync goes to Celery, but only after a worker answered a
ping: a site whose worker is not running learns it at once instead of watching a run stay queued.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.db import OperationalError, close_old_connections, connection
from django.utils.translation import gettext as _

from .conf import app_settings

#: Times an in-process run is started again when SQLite reports a lock before the run was claimed.
IN_PROCESS_ATTEMPTS = 5

logger = logging.getLogger(__name__)


def celery_app() -> Any:
    """Return the Celery app tasks are sent with (the site's current app)."""
    from celery import current_app

    return current_app._get_current_object()


def app_is_configured(app: Any = None) -> bool:
    """Tell whether the site created a Celery app (else Celery falls back to its unconfigured default).

    Celery's fallback, made when no app exists, is named "default" and uses the default loader, which
    never reads Django's CELERY_* settings.
    """
    from celery.loaders.default import Loader

    app = app if app is not None else celery_app()
    return not (app.main == "default" and isinstance(app.loader, Loader))


def why_no_worker() -> str:
    """Return why a sync sent to Celery now would not run, or "" when a worker can take it."""
    app = celery_app()
    if app.conf.task_always_eager:
        return ""
    if not app_is_configured(app):
        return _("No Celery app is configured for this site, so no worker can run this sync. Add the Celery "
                 "app file from the README, or set WECOM_SYNC['RUN_TASKS_IN_PROCESS'] = True to run syncs in "
                 "the web process.")
    timeout = app_settings.WORKER_PING_TIMEOUT
    if not timeout:
        return ""
    try:
        replies = app.control.ping(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - kombu raises several types when the broker is down
        logger.warning("wecom_sync.dispatch.broker_unreachable", extra={"error_type": type(exc).__name__})
        return _("The task queue could not be reached (%(type)s); the run was not started.") % {
            "type": type(exc).__name__}
    if not replies:
        logger.warning("wecom_sync.dispatch.no_worker", extra={"timeout": timeout})
        return _("No Celery worker answered within %(seconds)s s: is `celery worker` running?") % {
            "seconds": f"{timeout:g}"}
    return ""


def _run_in_thread(source_id: int, run_id: int, dry_run: bool, force: bool, trigger: str) -> None:
    from . import services
    from .models import SyncRun, SyncSource

    close_old_connections()
    try:
        for attempt in range(IN_PROCESS_ATTEMPTS):
            source = SyncSource.objects.filter(pk=source_id).first()
            run = SyncRun.objects.filter(pk=run_id).first()
            if source is None or run is None or run.status != SyncRun.Status.QUEUED:
                return
            try:
                services.run_full_sync(source, dry_run=dry_run, force=force, trigger=trigger, run=run)
                return
            except OperationalError:
                # SQLite answers "database is locked" when a request writes at the same moment; a run that
                # was not claimed yet (still queued) is safe to start again.
                if attempt + 1 == IN_PROCESS_ATTEMPTS:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except Exception:  # a thread's exception would go nowhere: log it (the run records its own failure)
        logger.exception("wecom_sync.dispatch.in_process_failed", extra={"run_id": run_id})
    finally:
        connection.close()


def start_in_process(source_id: int, run_id: int, *, dry_run: bool, force: bool, trigger: str) -> threading.Thread:
    """Run a queued sync in a daemon thread of this process and return the thread."""
    thread = threading.Thread(
        target=_run_in_thread, args=(source_id, run_id, dry_run, force, trigger),
        name=f"wecom-sync-run-{run_id}", daemon=True,
    )
    thread.start()
    logger.info("wecom_sync.dispatch.in_process", extra={"run_id": run_id})
    return thread
