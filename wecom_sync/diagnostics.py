"""The "Test connection" capability probe: what this source's credentials can actually do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.utils.translation import gettext as _

from .exceptions import WeComAPIError, WeComError, translate

#: Fields that apps created after 2022-06-20 no longer receive (wecom-protocol.md §2).
RESTRICTED_FIELDS = ("mobile", "email", "biz_mail", "avatar", "gender", "address")
MAX_DEPARTMENTS_SCANNED = 100


@dataclass
class ProbeStep:
    """One check of the probe: what was tried, whether it worked, and what to do if not."""

    name: str
    ok: bool
    detail: str = ""
    errcode: int | None = None
    hint: str = ""


@dataclass
class ProbeReport:
    """The result of probing a source."""

    steps: list[ProbeStep] = field(default_factory=list)
    departments: int | None = None
    users: int | None = None
    users_exact: bool = True
    readable_fields: list[str] = field(default_factory=list)
    missing_fields: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)


def _failed(name: str, exc: Exception) -> ProbeStep:
    if isinstance(exc, WeComAPIError):
        return ProbeStep(name, False, _("WeCom answered errcode %(code)s.") % {"code": exc.errcode},
                         exc.errcode, translate(exc.hint))
    return ProbeStep(name, False, str(exc), None, translate(getattr(exc, "hint", "")))


def probe_source(source: Any) -> ProbeReport:
    """Probe the source's credentials: tokens, the APIs a sync needs, visible counts and readable fields."""
    from .client import WeComClient

    report = ProbeReport()
    root = int(source.root_department_id or 1)
    from .internal.secretbox import SecretDecryptionError
    from .models import SECRETS_UNREADABLE_MESSAGE

    try:
        app = WeComClient.from_source(source, credential="app") if source.secret else None
        contact = WeComClient.from_source(source, credential="contact_sync") if source.contact_sync_secret else None
    except SecretDecryptionError:
        report.steps.append(ProbeStep(_("Stored secrets"), False, str(SECRETS_UNREADABLE_MESSAGE), None, ""))
        return report
    except WeComError as exc:  # e.g. an API base URL outside WECOM_SYNC["API_HOSTS"]
        report.steps.append(_failed(_("API base URL"), exc))
        return report

    departments: list[dict] = []
    if app is not None:
        try:
            app.get_department(root)
            report.steps.append(ProbeStep(_("App Secret: read the root department"), True))
        except WeComError as exc:
            report.steps.append(_failed(_("App Secret: read the root department"), exc))
        try:
            departments = app.list_departments(root)
            report.departments = len(departments)
            report.steps.append(ProbeStep(_("App Secret: list departments"), True,
                                          _("%(n)d departments visible.") % {"n": len(departments)}))
        except WeComError as exc:
            report.steps.append(_failed(_("App Secret: list departments"), exc))
    else:
        report.steps.append(ProbeStep(_("App Secret"), False, _("Not set."), None,
                                      _("Details (names, members) need the self-built app's Secret.")))

    if contact is not None:
        try:
            ids = contact.simplelist_departments(root)
            report.departments = report.departments if report.departments is not None else len(ids)
            report.steps.append(ProbeStep(_("Contact-sync secret: list department ids"), True,
                                          _("%(n)d departments.") % {"n": len(ids)}))
        except WeComError as exc:
            report.steps.append(_failed(_("Contact-sync secret: list department ids"), exc))
        try:
            rows = contact.list_user_ids()
            report.users = len({str(r.get("userid", "")).lower() for r in rows})
            report.steps.append(ProbeStep(_("Contact-sync secret: list member ids"), True,
                                          _("%(n)d members.") % {"n": report.users}))
        except WeComError as exc:
            report.steps.append(_failed(_("Contact-sync secret: list member ids"), exc))

    if app is not None and departments:
        seen: dict[str, dict] = {}
        scanned = departments[:MAX_DEPARTMENTS_SCANNED]
        try:
            for dept in scanned:
                for user in app.list_users(int(dept["id"])):
                    seen[str(user.get("userid", "")).lower()] = user
            report.steps.append(ProbeStep(_("App Secret: read members"), True,
                                          _("%(n)d members read.") % {"n": len(seen)}))
        except WeComError as exc:
            report.steps.append(_failed(_("App Secret: read members"), exc))
        if report.users is None:
            report.users = len(seen)
            report.users_exact = len(scanned) == len(departments)
        for name in RESTRICTED_FIELDS:
            if any(u.get(name) not in (None, "", "0", 0) for u in seen.values()):
                report.readable_fields.append(name)
            elif seen:
                report.missing_fields.append(name)
    return report
