"""Signals of wecom_sync. They notify; they never decide (the adapter decides).

Every signal is sent after the change is committed, with ``sender`` the adapter class and keyword arguments
``source`` (SyncSource) and ``run`` (SyncRun); user signals add ``user`` (the Django user) and
``external_user`` (ExternalUser).
"""

from django.dispatch import Signal

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
