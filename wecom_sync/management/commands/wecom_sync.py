"""``manage.py wecom_sync [SLUG ...] [--dry-run] [--force]``: full syncs in the foreground."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from wecom_sync import services
from wecom_sync.models import SyncRun, SyncSource
from wecom_sync.sync.runlog import COUNTER_LABELS

PHASES = {"fetch": gettext_noop("fetch"), "apply": gettext_noop("apply")}
#: The counters the summary prints, in this order (labels: ``runlog.COUNTER_LABELS``).
SUMMARY_KEYS = (
    "departments_created",
    "departments_updated",
    "departments_moved",
    "departments_removed",
    "users_created",
    "users_updated",
    "users_moved",
    "users_deactivated",
    "users_reactivated",
    "users_deleted",
    "users_removed",
    "users_skipped",
    "users_failed",
    "departments_failed",
    "pending_removals",
    "users_unchanged",
)


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, stream: Any, label: str, enabled: bool) -> None:
        self.stream = stream
        self.label = label
        self.enabled = enabled
        self.last = 0.0
        self.drawn = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        width = 30
        filled = int(width * done / total) if total else 0
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{self.label} {_(PHASES.get(phase, phase)):<5} [{bar}] {done}/{total}")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


class Command(BaseCommand):
    help = _("Run a full sync of WeCom sources (all enabled sources when no slug is given).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slugs", nargs="*", metavar="SLUG", help=_("Slugs of the sources to sync."))
        parser.add_argument("--dry-run", action="store_true", help=_("Plan only: store the changes, apply none."))
        parser.add_argument("--force", action="store_true", help=_("Apply removals even above the threshold."))
        parser.add_argument("--no-progress", action="store_true", help=_("Do not draw the progress bar."))

    def handle(self, *args: Any, **options: Any) -> None:
        slugs = options["slugs"]
        if slugs:
            sources = list(SyncSource.objects.filter(slug__in=slugs))
            missing = sorted(set(slugs) - {s.slug for s in sources})
            if missing:
                raise CommandError(_("Unknown source(s): %(slugs)s") % {"slugs": ", ".join(missing)})
        else:
            sources = list(SyncSource.objects.filter(enabled=True))
            if not sources:
                raise CommandError(_("No enabled source to sync."))
        interactive = not options["no_progress"] and getattr(self.stderr._out, "isatty", lambda: False)()
        failed = False
        for source in sources:
            bar = ProgressBar(self.stderr._out if hasattr(self.stderr, "_out") else sys.stderr, source.slug,
                              not options["no_progress"] and (interactive or options["verbosity"] > 1))
            try:
                run = services.run_full_sync(
                    source, dry_run=options["dry_run"], force=options["force"], trigger=SyncRun.Trigger.COMMAND,
                    progress=bar,
                )
            finally:
                bar.close()
            self.print_summary(run)
            failed |= run.status in (SyncRun.Status.FAILED, SyncRun.Status.CANCELLED)
        if failed:
            raise CommandError(_("At least one run failed or was refused; see the messages above."))

    def print_summary(self, run: SyncRun) -> None:
        """Print a table of the run's counters and its message."""
        styles: dict[str, Callable[[str], str]] = {
            SyncRun.Status.SUCCEEDED: self.style.SUCCESS,
            SyncRun.Status.PARTIAL: self.style.WARNING,
            SyncRun.Status.HELD: self.style.WARNING,
        }
        style = styles.get(str(run.status), self.style.ERROR)
        duration = run.duration.total_seconds() if run.duration else 0.0
        self.stdout.write(style(
            _("%(source)s: run #%(id)s %(kind)s %(status)s in %(seconds).1fs") % {
                "source": run.source.slug, "id": run.pk, "kind": run.get_kind_display(),
                "status": run.get_status_display(), "seconds": duration,
            }
        ))
        counters = run.counters or {}
        rows = [(str(COUNTER_LABELS[key]), counters[key]) for key in SUMMARY_KEYS if counters.get(key)]
        if rows:
            width = max(len(str(label)) for label, _value in rows)
            for label, value in rows:
                self.stdout.write(f"  {str(label):<{width}}  {value:>8}")
        if run.message:
            for line in run.message.splitlines():
                self.stdout.write(f"  {line}")
