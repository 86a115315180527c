"""Template tag for "Log in with WeCom" buttons: ``{% load wecom_sync_login %}{% wecom_login_buttons %}``."""

from __future__ import annotations

from typing import Any

from django import template

from ..login_views import login_url
from ..models import SyncSource

register = template.Library()


@register.inclusion_tag("wecom_sync/login_buttons.html", takes_context=True)
def wecom_login_buttons(context: Any, next: str | None = None) -> dict[str, Any]:  # noqa: A002 - Django's name
    """One "Log in with WeCom" button per enabled source with sign-in on; ``next`` defaults to the page's."""
    if next is None:
        request = context.get("request")
        next = context.get("next") or (request.GET.get("next", "") if request is not None else "")  # noqa: A001
    sources = SyncSource.objects.filter(enabled=True, login_enabled=True).only("pk", "name", "slug").order_by("name")
    links = [{"slug": s.slug, "name": s.name, "url": login_url(s, next or "")} for s in sources]
    return {"wecom_login_links": links, "wecom_login_named": len(links) > 1}
