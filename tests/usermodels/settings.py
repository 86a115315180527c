"""Settings of one variant of the user-model matrix: ``USERMODEL_VARIANT`` names it.

Each variant gets its own test database name, so that it never collides with the main suite's on PostgreSQL.
"""

import os

from tests.settings import *  # noqa: F401,F403
from tests.settings import DATABASES, INSTALLED_APPS, WECOM_SYNC

VARIANT = os.environ.get("USERMODEL_VARIANT", "default")

#: variant -> (app, AUTH_USER_MODEL, adapter)
VARIANTS = {
    "default": (None, "auth.User", None),
    "email_login": ("tests.usermodels.email_login", "email_login.EmailUser", None),
    "uuid_pk": ("tests.usermodels.uuid_pk", "uuid_pk.UUIDUser", None),
    "required_fields": ("tests.usermodels.required_fields", "required_fields.RequiredUser",
                        "tests.usermodels.required_fields.adapter.RequiredFieldsAdapter"),
    "db_default": ("tests.usermodels.db_default", "db_default.DbDefaultUser", None),
    "generated": ("tests.usermodels.generated", "generated.GeneratedUser", None),
}

_app, AUTH_USER_MODEL, _adapter = VARIANTS[VARIANT]
if _app:
    INSTALLED_APPS = [*INSTALLED_APPS, _app]
if _adapter:
    WECOM_SYNC = {**WECOM_SYNC, "ADAPTER": _adapter}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_um_{VARIANT}"}
