from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


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
        if apps.is_installed("django.contrib.admin"):
            # When wecom_sync comes before the admin in INSTALLED_APPS, its admin module ran before the user
            # admin was registered: add the "Send a WeCom message" action now (idempotent).
            from .admin_messages import install

            install()
