"""System checks for a misconfigured wecom_sync."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _

from .conf import app_settings


@register(Tags.security)
def check_encryption_key(app_configs: Any = None, **kwargs: Any) -> list:
    """Outside DEBUG, secrets should be encrypted with a dedicated key, not one derived from SECRET_KEY."""
    if settings.DEBUG or app_settings.ENCRYPTION_KEYS:
        return []
    return [
        Warning(
            _("WECOM_SYNC['ENCRYPTION_KEYS'] is not set; secrets are encrypted with a key derived from SECRET_KEY."),
            hint=_("Set WECOM_SYNC['ENCRYPTION_KEYS'] to a list with one long random string, so rotating "
                   "SECRET_KEY does not make the stored WeCom secrets unreadable."),
            id="wecom_sync.W001",
        )
    ]


#: Shortest ENCRYPTION_KEYS entry accepted outside DEBUG (a key is hashed, so length stands for entropy).
MIN_KEY_LENGTH = 32


@register(Tags.security)
def check_encryption_key_length(app_configs: Any = None, **kwargs: Any) -> list:
    """Outside DEBUG, every ENCRYPTION_KEYS entry must be a long random string."""
    if settings.DEBUG:
        return []
    short = [i for i, key in enumerate(app_settings.ENCRYPTION_KEYS) if len(str(key)) < MIN_KEY_LENGTH]
    if not short:
        return []
    return [
        Error(
            _("WECOM_SYNC['ENCRYPTION_KEYS'] has keys shorter than %(n)d characters (positions %(pos)s).")
            % {"n": MIN_KEY_LENGTH, "pos": ", ".join(str(i) for i in short)},
            hint=_("Generate one with: python -c \"import secrets; print(secrets.token_urlsafe(48))\""),
            id="wecom_sync.E005",
        )
    ]


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list:
    """Validate the shape of WECOM_SYNC values."""
    errors = []
    value = getattr(settings, "WECOM_SYNC", {})
    if not isinstance(value, dict):
        return [Error(_("WECOM_SYNC must be a dict."), id="wecom_sync.E001")]
    try:
        import_string(app_settings.ADAPTER)
    except ImportError:
        errors.append(
            Error(_("WECOM_SYNC['ADAPTER'] cannot be imported: %(path)s") % {"path": app_settings.ADAPTER},
                  id="wecom_sync.E002")
        )
    unknown = set(app_settings.LINK_EXISTING_BY) - {"email", "mobile", "username"}
    if unknown:
        errors.append(
            Error(_("WECOM_SYNC['LINK_EXISTING_BY'] accepts only email, mobile and username; got %(v)s")
                  % {"v": ", ".join(sorted(unknown))}, id="wecom_sync.E003")
        )
    if "rest_framework" not in settings.INSTALLED_APPS:
        errors.append(Error(_("wecom_sync needs 'rest_framework' in INSTALLED_APPS."), id="wecom_sync.E004"))
    return errors


@register()
def check_login_button(app_configs: Any = None, **kwargs: Any) -> list:
    """With Sign in with WeCom installed, warn when the admin login page cannot show its buttons.

    That is when wecom_sync comes after django.contrib.admin (so its admin/login.html is not found) and the admin
    site has a login template of the project's own (so apps.add_admin_login_button left it alone).
    """
    if "wecom_sync.auth.WeComBackend" not in getattr(settings, "AUTHENTICATION_BACKENDS", ()):
        return []
    from django.contrib import admin

    from .apps import ADMIN_LOGIN_TEMPLATE

    names = [entry.split(".apps.")[0] for entry in settings.INSTALLED_APPS]
    if "django.contrib.admin" in names and "wecom_sync" in names and (
        names.index("wecom_sync") > names.index("django.contrib.admin")
    ) and admin.site.login_template != ADMIN_LOGIN_TEMPLATE:
        return [
            Warning(
                _("The admin login page will not show the “Log in with WeCom” button: 'wecom_sync' comes after "
                  "'django.contrib.admin' in INSTALLED_APPS."),
                hint=_("Move 'wecom_sync' above 'django.contrib.admin', or add {% wecom_login_buttons %} to your "
                       "own admin/login.html (see docs/login.md)."),
                id="wecom_sync.W010",
            )
        ]
    return []


@register()
def check_celery_app(app_configs: Any = None, **kwargs: Any) -> list:
    """Warn when syncs would go to Celery but the site created no Celery app (they would never run)."""
    from .dispatch import app_is_configured, celery_app

    if app_settings.RUN_TASKS_IN_PROCESS or celery_app().conf.task_always_eager or app_is_configured():
        return []
    return [
        Warning(
            _("No Celery app is configured: syncs and callback events sent to Celery would never run."),
            hint=_("Add the Celery app file from the README (yourproject/celery.py, imported in "
                   "yourproject/__init__.py), or set WECOM_SYNC['RUN_TASKS_IN_PROCESS'] = True to run them in "
                   "the web process."),
            id="wecom_sync.W002",
        )
    ]
