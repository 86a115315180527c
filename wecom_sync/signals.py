"""Signals of wecom_sync. They notify; they never decide (the adapter decides).

In a full sync, user signals are sent after each batch is committed; in callback processing, inside the
event's transaction (use ``transaction.on_commit`` for follow-up work). ``sender`` is the adapter class;
keyword arguments are ``source`` (SyncSource) and ``run`` (SyncRun); user signals add ``user`` (the Django
user) and ``external_user`` (ExternalUser). A receiver that raises is logged and never breaks a sync.
"""

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger("wecom_sync.signals")

#: A Django user was created for (or linked to) a WeCom member.
user_created = Signal()
#: A Django user's fields were updated from WeCom.
user_updated = Signal()
#: A Django user was deactivated because the member left, was disabled, or is gone from the directory.
user_deactivated = Signal()
#: A Django user was reactivated because the member is back or active again.
user_reactivated = Signal()
#: A run finished (any final status, including held). Sent with ``sender`` the SyncRun class and ``run``.
sync_finished = Signal()


def notify(signal: Signal, sender: Any, **kwargs: Any) -> None:
    """Send a signal to every receiver; a receiver that raises is logged and never breaks a sync."""
    for receiver, result in signal.send_robust(sender=sender, **kwargs):
        if isinstance(result, Exception):
            logger.error(
                "wecom_sync.signal.receiver_failed",
                extra={"receiver": getattr(receiver, "__qualname__", repr(receiver)),
                       "error_type": type(result).__name__},
                exc_info=(type(result), result, result.__traceback__),
            )
