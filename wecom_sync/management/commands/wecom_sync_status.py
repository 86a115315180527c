"""``manage.py wecom_sync_status [SLUG ...] [--json]``: one line per source; non-zero exit when one needs attention."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from wecom_sync.health import SourceHealth, check_sources
from wecom_sync.models import SyncSource


def _line(health: SourceHealth) -> str:
    """One line for one source: slug, verdict, the figures, and the problems if any."""
    # The verdict is a stable token for scripts that read the output; the rest is for people.
    if not health.enabled:
        verdict = "DISABLED"
    else:
        verdict = "OK" if health.ok else "PROBLEM"
    never = _("never")
    facts = [
        _("last success %(when)s") % {"when": _fmt(health.last_success_at) or never},
        _("last failure %(when)s") % {"when": _fmt(health.last_failure_at) or never},
        _("held runs %(count)d") % {"count": len(health.held_run_ids)},
        _("pending events %(count)d") % {"count": health.pending_events},
        _("members %(count)d") % {"count": health.members},
        _("departments %(count)d") % {"count": health.departments},
    ]
    line = f"{health.slug}  {verdict}  " + " · ".join(facts)
    if health.problems:
        line += "  — " + " ".join(p.message for p in health.problems)
    return line


def _fmt(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z") if value is not None else ""


class Command(BaseCommand):
    help = _(
        "Print the health of each WeCom source, one line each; exit with status 1 when a source has a held run, "
        "a failed last sync, no successful sync within twice its interval, or old pending events."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slugs", nargs="*", metavar="SLUG", help=_("Only these sources (default: all)."))
        parser.add_argument("--json", action="store_true", help=_("Print the report as JSON (as the health endpoint)."))

    def handle(self, *args: Any, **options: Any) -> None:
        slugs = options["slugs"]
        sources = SyncSource.objects.order_by("name", "pk")
        if slugs:
            sources = sources.filter(slug__in=slugs)
            missing = sorted(set(slugs) - set(sources.values_list("slug", flat=True)))
            if missing:
                raise CommandError(_("Unknown source(s): %(slugs)s") % {"slugs": ", ".join(missing)})
        report = check_sources(sources)
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
        else:
            if not report.sources:
                self.stdout.write(_("No source is configured."))
            for health in report.sources:
                self.stdout.write(_line(health))
        if not report.ok:
            bad = [h.slug for h in report.sources if not h.ok]
            raise CommandError(_("Needs attention: %(slugs)s") % {"slugs": ", ".join(bad)}, returncode=1)
