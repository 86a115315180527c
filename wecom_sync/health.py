"""Operations signals: whether each source is healthy, for monitoring.

One computation shared by ``manage.py wecom_sync_status`` and the health endpoint of the REST API. A source
is not healthy when it has a run held for approval, when its last finished sync failed, when it has a
schedule and no successful full sync within twice its interval, or when a callback event has been pending
longer than ``STATUS_PENDING_EVENT_MAX_AGE_SECONDS``. A disabled source is reported, never counted as a
problem. The result holds counts, run ids and times: no secret and no personal data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Max, Min
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from .conf import app_settings
from .models import CallbackEvent, ExternalDepartment, ExternalUser, SyncRun, SyncSource

#: Problem codes (stable, for machines); each problem also carries a translated message (for people).
HELD_RUN = "held_run"
LAST_RUN_FAILED = "last_run_failed"
NO_RECENT_SUCCESS = "no_recent_success"
OLD_PENDING_EVENTS = "old_pending_events"

#: The runs that count as "the last sync": full syncs and dry runs (event batches have their own signal,
#: the pending events), finished, and not refused (a refused run says nothing about the directory).
SYNC_KINDS = (SyncRun.Kind.FULL, SyncRun.Kind.DRY_RUN)
DECISIVE_STATUSES = (SyncRun.Status.SUCCEEDED, SyncRun.Status.PARTIAL, SyncRun.Status.FAILED,
                     SyncRun.Status.REJECTED)


@dataclass(frozen=True)
class Problem:
    """One reason a source is not healthy: a stable code and a plain-language message."""

    code: str
    message: str


@dataclass
class SourceHealth:
    """The health of one source, and the figures behind it."""

    source_id: int
    slug: str
    name: str
    enabled: bool
    last_run_id: int | None = None
    last_run_status: str | None = None
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    held_run_ids: list[int] = field(default_factory=list)
    pending_events: int = 0
    oldest_pending_event_at: datetime | None = None
    failed_events: int = 0
    members: int = 0
    departments: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing needs attention."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (times in ISO 8601)."""
        return {
            "slug": self.slug,
            "name": self.name,
            "enabled": self.enabled,
            "ok": self.ok,
            "problems": [{"code": p.code, "message": p.message} for p in self.problems],
            "last_run": {"id": self.last_run_id, "status": self.last_run_status} if self.last_run_id else None,
            "last_success_at": _iso(self.last_success_at),
            "last_failure_at": _iso(self.last_failure_at),
            "held_runs": len(self.held_run_ids),
            "held_run_ids": list(self.held_run_ids),
            "pending_events": self.pending_events,
            "oldest_pending_event_at": _iso(self.oldest_pending_event_at),
            "failed_events": self.failed_events,
            "members": self.members,
            "departments": self.departments,
        }


@dataclass
class HealthReport:
    """The health of every source checked."""

    checked_at: datetime
    sources: list[SourceHealth]

    @property
    def ok(self) -> bool:
        """Whether no source needs attention."""
        return all(s.ok for s in self.sources)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"ok": self.ok, "checked_at": _iso(self.checked_at), "sources": [s.as_dict() for s in self.sources]}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def source_health(source: SyncSource, *, now: datetime | None = None) -> SourceHealth:
    """Compute the health of one source at ``now`` (default: the current time)."""
    now = now or timezone.now()
    health = SourceHealth(source_id=source.pk, slug=source.slug, name=source.name, enabled=source.enabled)
    runs = SyncRun.objects.filter(source=source)
    last = (
        runs.filter(kind__in=SYNC_KINDS, status__in=DECISIVE_STATUSES)
        .order_by("-created_at", "-id")
        .values("id", "status")
        .first()
    )
    if last is not None:
        health.last_run_id, health.last_run_status = last["id"], last["status"]
    health.last_success_at = runs.filter(kind=SyncRun.Kind.FULL, status=SyncRun.Status.SUCCEEDED).aggregate(
        at=Max("finished_at"))["at"]
    health.last_failure_at = runs.filter(kind__in=SYNC_KINDS, status=SyncRun.Status.FAILED).aggregate(
        at=Max("finished_at"))["at"]
    health.held_run_ids = list(runs.filter(status=SyncRun.Status.HELD).order_by("id").values_list("id", flat=True))
    events = CallbackEvent.objects.filter(source=source)
    pending = events.filter(status=CallbackEvent.Status.PENDING).aggregate(n=Count("id"), oldest=Min("received_at"))
    health.pending_events, health.oldest_pending_event_at = pending["n"], pending["oldest"]
    health.failed_events = events.filter(status=CallbackEvent.Status.FAILED).count()
    health.members = ExternalUser.objects.filter(source=source, is_removed=False).count()
    health.departments = ExternalDepartment.objects.filter(source=source, is_removed=False).count()
    if source.enabled:
        health.problems = _problems(source, health, now)
    return health


def _problems(source: SyncSource, health: SourceHealth, now: datetime) -> list[Problem]:
    problems = []
    if health.held_run_ids:
        ids = ", ".join(f"#{pk}" for pk in health.held_run_ids)
        problems.append(Problem(HELD_RUN, ngettext(
            "%(count)d run is held for approval (%(ids)s).", "%(count)d runs are held for approval (%(ids)s).",
            len(health.held_run_ids)) % {"count": len(health.held_run_ids), "ids": ids}))
    if health.last_run_status == SyncRun.Status.FAILED:
        problems.append(Problem(LAST_RUN_FAILED, _("The last sync (#%(id)d) failed.") % {"id": health.last_run_id}))
    if source.sync_interval_minutes:
        window = timedelta(minutes=2 * source.sync_interval_minutes)
        since = health.last_success_at or source.created_at
        if since + window < now:
            if health.last_success_at is None:
                message = _("No successful full sync yet, and the schedule asks for one every %(minutes)d minutes.")
            else:
                message = _("No successful full sync for more than twice the interval of %(minutes)d minutes.")
            problems.append(Problem(NO_RECENT_SUCCESS, message % {"minutes": source.sync_interval_minutes}))
    max_age = app_settings.STATUS_PENDING_EVENT_MAX_AGE_SECONDS
    oldest = health.oldest_pending_event_at
    if oldest is not None and oldest + timedelta(seconds=max_age) < now:
        problems.append(Problem(OLD_PENDING_EVENTS, _(
            "A callback event has been pending for more than %(seconds)d seconds (%(count)d pending).")
            % {"seconds": max_age, "count": health.pending_events}))
    return problems


def check_sources(sources: Iterable[SyncSource] | None = None, *, now: datetime | None = None) -> HealthReport:
    """Compute the health of ``sources`` (default: every source, by name) at ``now``."""
    now = now or timezone.now()
    if sources is None:
        sources = SyncSource.objects.order_by("name", "pk")
    return HealthReport(checked_at=now, sources=[source_health(s, now=now) for s in sources])
