import sys

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _

#: The admin login template with the WeCom buttons, for projects that list wecom_sync after django.contrib.admin.
ADMIN_LOGIN_TEMPLATE = "wecom_sync/admin_login.html"


class WeComSyncConfig(AppConfig):
    name = "wecom_sync"
    verbose_name = _("WeCom directory sync")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.apps import apps
        from django.utils.translation import gettext

        from . import checks  # noqa: F401 - registers system checks
        from .exceptions import set_translator

        set_translator(gettext)  # errcode hints and error texts are shown in the active language
        if apps.is_installed("django.contrib.admin") and "wecom_sync.admin" in sys.modules:
            # The admin's autodiscovery (django.contrib.admin listed before wecom_sync) imported wecom_sync.admin
            # before the user admin of an app listed later was registered: add the "Send a WeCom message"
            # action now (idempotent). Otherwise autodiscovery has not run yet and installs it when it imports
            # wecom_sync.admin; importing the package here would register our admins ahead of it.
            from .admin.messages import install  # app loading: only once the admin package is loaded

            install()
        self.add_admin_login_button()

    @staticmethod
    def add_admin_login_button() -> None:
        """Give the admin login page its "Log in with WeCom" buttons when our admin/login.html is not found first.

        Listed before django.contrib.admin, wecom_sync's admin/login.html is the one Django finds. Listed after, the
        default admin site gets a login template that adds the buttons, unless the project chose one itself.
        """
        from django.conf import settings

        names = [entry.split(".apps.")[0] for entry in settings.INSTALLED_APPS]
        if "django.contrib.admin" not in names or names.index("wecom_sync") < names.index("django.contrib.admin"):
            return
        from django.contrib import admin

        if admin.site.login_template is None:
            admin.site.login_template = ADMIN_LOGIN_TEMPLATE
