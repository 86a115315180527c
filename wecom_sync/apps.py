from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class WeComSyncConfig(AppConfig):
    name = "wecom_sync"
    verbose_name = _("WeCom directory sync")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.utils.translation import gettext

        from . import checks  # noqa: F401 - registers system checks
        from .exceptions import set_translator

        set_translator(gettext)  # errcode hints and error texts are shown in the active language
