"""The adapter decides how WeCom members become Django users.

Subclass ``DefaultWeComAdapter``, override the hooks you need and name your class in
``WECOM_SYNC["ADAPTER"]``. The sync engine calls the batch methods (``find_existing_users``,
``assign_usernames``) once per batch so that queries grow with batches, not with users; the per-user hooks
(``username_base``, ``split_name``, ``populate_user``, ``is_active_for_status``, ``can_deactivate``) are
plain Python and are what most projects override.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.db.models.functions import Lower
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _

from .conf import app_settings, register_cache
from .sync.snapshot import RemoteUser

if TYPE_CHECKING:
    from .models import SyncSource

_adapter_cache: dict[str, Any] = register_cache({})

LINK_KEYS = ("email", "mobile", "username")


class LinkError(Exception):
    """An existing Django user could not be linked without guessing (more than one candidate)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LinkRefused(LinkError):
    """The only candidate for linking is an account the sync must not take over (an admin, by default)."""


def comparable(value: str) -> bool:
    """Whether a link value may be compared case-insensitively: ASCII only.

    Unicode case mapping folds look-alikes onto ASCII (KELVIN SIGN U+212A lowers to "k"), so a non-ASCII value
    could match a different person's address or login; such values are never used to link.
    """
    return value.isascii()


class DefaultWeComAdapter:
    """Default policy: username from userid, name and email from WeCom, is_active from status."""

    #: Field of the user model compared with the WeCom mobile when LINK_EXISTING_BY has "mobile".
    mobile_field = "mobile"

    # -- users model helpers -------------------------------------------------------------------------

    def get_user_model(self) -> Any:
        """Return the Django user model the adapter creates."""
        return get_user_model()

    def _field(self, name: str) -> Any:
        cache = self.__dict__.setdefault("_fields", {})
        if name not in cache:
            try:
                cache[name] = self.get_user_model()._meta.get_field(name)
            except Exception:  # noqa: BLE001 - FieldDoesNotExist and friends: the model lacks the field
                cache[name] = None
        return cache[name]

    def _has_field(self, name: str) -> bool:
        return self._field(name) is not None

    def _max_length(self, name: str) -> int | None:
        return getattr(self._field(name), "max_length", None)

    # -- usernames -----------------------------------------------------------------------------------

    def login_is_email(self) -> bool:
        """Whether the user model signs in with its email field (``USERNAME_FIELD`` is the email field)."""
        model = self.get_user_model()
        return model.USERNAME_FIELD == model.get_email_field_name()

    def username_base(self, source: SyncSource, remote: RemoteUser) -> str:
        """The preferred login of a new Django user: the WeCom userid, or the email on an email-login model."""
        if self.login_is_email():
            return self.email_for(remote) or remote.userid
        return remote.userid

    def username_suffix(self, source: SyncSource, remote: RemoteUser, attempt: int) -> str:
        """A deterministic suffix for a colliding username: a short hash of corp and userid, then a counter."""
        token = hashlib.sha256(f"{source.corp_id}:{remote.key}".encode()).hexdigest()[:6]
        return f"-{token}" if attempt == 1 else f"-{token}-{attempt}"

    def _with_suffix(self, base: str, suffix: str, max_len: int) -> str:
        """``base`` with ``suffix``, within ``max_len``; an email keeps its domain (``a-1f2e3d@x.cn``)."""
        local, at, domain = base.rpartition("@")
        if at and local and len(domain) + len(suffix) + 2 <= max_len:
            return local[: max_len - len(suffix) - len(domain) - 1] + suffix + "@" + domain
        return base[: max_len - len(suffix)] + suffix

    def assign_usernames(self, source: SyncSource, pairs: Sequence[tuple[RemoteUser, Any]]) -> None:
        """Give each new (unsaved) user a free username; once saved it is never changed by the sync."""
        model = self.get_user_model()
        field = model.USERNAME_FIELD
        max_len = self._max_length(field) or 150
        wanted: dict[int, str] = {}
        for i, (remote, _user) in enumerate(pairs):
            wanted[i] = self.username_base(source, remote)[:max_len]
        attempt = 0
        pending = set(wanted)
        chosen: set[str] = set()  # lower-cased
        while pending:
            # Compared case-insensitively: "ROOT" next to "root" would be a look-alike of another login.
            names = {wanted[i].lower() for i in pending}
            rows = model._default_manager.annotate(_login=Lower(field)).filter(_login__in=names)
            taken = {str(name).lower() for name in rows.values_list(field, flat=True)}
            retry = set()
            for i in sorted(pending):
                name = wanted[i]
                if name.lower() in taken or name.lower() in chosen:
                    retry.add(i)
                else:
                    chosen.add(name.lower())
                    setattr(pairs[i][1], field, name)
            attempt += 1
            for i in retry:
                remote = pairs[i][0]
                suffix = self.username_suffix(source, remote, attempt)
                wanted[i] = self._with_suffix(self.username_base(source, remote), suffix, max_len)
            pending = retry

    # -- fields --------------------------------------------------------------------------------------

    def split_name(self, name: str) -> tuple[str, str]:
        """Split a WeCom name into (first_name, last_name).

        A name with spaces ("Ada Lovelace") splits at the last space. A name without ("张三") goes whole
        into first_name: Django's get_full_name() puts first_name first, so splitting a Chinese name
        would print it backwards.
        """
        name = (name or "").strip()
        if " " in name:
            first, _sep, last = name.rpartition(" ")
            return first.strip(), last.strip()
        return name, ""

    def email_for(self, remote: RemoteUser) -> str:
        """The email of a member: the company mailbox (biz_mail) first, then the email field."""
        return (remote.biz_mail or remote.email or "").strip()

    def populate_user(self, user: Any, remote: RemoteUser, *, source: SyncSource, created: bool) -> set[str]:
        """Copy WeCom values onto a Django user; return the names of the fields that changed.

        An empty remote value never erases a local one, and fields the sync does not own are not touched.
        """
        changed: set[str] = set()

        def put(field: str, value: str) -> None:
            if not value or not self._has_field(field):
                return
            limit = self._max_length(field)
            value = value[:limit] if limit else value
            if getattr(user, field, None) != value:
                setattr(user, field, value)
                changed.add(field)

        if remote.name:
            first, last = self.split_name(remote.name)
            put("first_name", first)
            if last or created:
                put("last_name", last)
        if created or not self.login_is_email():
            # On an email-login model the email is the login: set once, never rewritten by the sync.
            put(self.get_user_model().get_email_field_name(), self.email_for(remote))
        return changed

    def is_active_for_status(self, status: int) -> bool:
        """Whether a WeCom status gives an active Django account (1 yes; 2, 5 no; 4 per setting)."""
        if status == 1:
            return True
        if status == 4:
            return app_settings.NOT_ACTIVATED_USERS_ACTIVE
        return False

    def can_login(self, external_user: Any) -> bool:
        """Whether a mirrored member may sign in with WeCom: by default, when their status gives an active account."""
        return self.is_active_for_status(int(external_user.status))

    def can_deactivate(self, user: Any) -> bool:
        """Whether the sync may deactivate or delete this Django user (never a superuser)."""
        return not getattr(user, "is_superuser", False)

    def can_link(self, user: Any) -> bool:
        """Whether an existing account may be linked to a WeCom member (never a superuser or staff member).

        Linking hands the account to whoever controls the member in WeCom, so accounts with admin rights are
        refused; an admin can still link one by hand in the WeCom user's admin page.
        """
        return not (getattr(user, "is_superuser", False) or getattr(user, "is_staff", False))

    def protected_fields(self, origin: str) -> set[str]:
        """Fields of the Django user the sync must not change for an account of this origin.

        The sync owns only accounts it created: on linked and manual accounts the login field and the email
        stay as they are, unless ``WECOM_SYNC["LINKED_ACCOUNT_FIELDS"]`` lists them.
        """
        if origin not in ("linked", "manual"):
            return set()
        model = self.get_user_model()
        aliases = {"username": model.USERNAME_FIELD, "email": model.get_email_field_name()}
        allowed = {aliases.get(name, name) for name in app_settings.LINKED_ACCOUNT_FIELDS}
        return {model.USERNAME_FIELD, model.get_email_field_name()} - allowed

    def new_user(self, source: SyncSource, remote: RemoteUser) -> Any:
        """Return a new, unsaved Django user for a WeCom member (the username is assigned afterwards)."""
        user = self.get_user_model()()
        # What set_unusable_password() stores ("!" + random), with one call to the OS random source
        # instead of forty to random.choice: this runs for every new member of a large first sync.
        user.password = UNUSABLE_PASSWORD_PREFIX + secrets.token_urlsafe(30)
        self.populate_user(user, remote, source=source, created=True)
        user.is_active = self.is_active_for_status(remote.status)
        return user

    # -- linking existing users ----------------------------------------------------------------------

    def link_values(self, remote: RemoteUser) -> dict[str, list[str]]:
        """The values compared per LINK_EXISTING_BY key (empty and non-ASCII values are never compared)."""
        # Checked before lower(), which is what folds a look-alike onto ASCII.
        values = {
            "email": [v.strip() for v in (remote.biz_mail, remote.email) if v and v.strip()],
            "mobile": [remote.mobile.strip()] if remote.mobile and remote.mobile.strip() else [],
            "username": [remote.userid] if remote.userid else [],
        }
        values = {k: [v.lower() if k == "email" else v for v in vals if comparable(v)] for k, vals in values.items()}
        return {k: v for k, v in values.items() if k in app_settings.LINK_EXISTING_BY and v}

    def find_existing_users(
        self, source: SyncSource, remotes: Iterable[RemoteUser]
    ) -> dict[str, Any | LinkError | None]:
        """Return, per normalised userid, the Django user to link, None, or a LinkError when ambiguous.

        Users already linked to another member of this source are not candidates.
        """
        from .models import ExternalUser

        model = self.get_user_model()
        remotes = list(remotes)
        self._link_calls = getattr(self, "_link_calls", 0) + 1
        per_remote = {r.key: self._comparable_values(self.link_values(r)) for r in remotes}
        result: dict[str, Any | LinkError | None] = {r.key: None for r in remotes}
        keys = sorted({k for values in per_remote.values() for k in values})
        if not keys:
            return result
        found: dict[str, dict[str, set[int]]] = {}  # link key -> value -> user pks
        users: dict[int, Any] = {}
        for key in keys:
            field = {"email": model.get_email_field_name(), "mobile": self.mobile_field}.get(
                key, model.USERNAME_FIELD
            )
            if not self._has_field(field):
                continue
            values = {v for vals in per_remote.values() for v in vals.get(key, ())}
            qs = self._link_candidates(key, field, values)
            bucket = found.setdefault(key, {})
            for user in qs:
                if not comparable(str(getattr(user, field) or "").strip()):
                    continue  # the database's lower() may fold a look-alike stored value onto the ASCII one
                users[user.pk] = user
                link = user._link if key in ("email", "username") else getattr(user, field)
                bucket.setdefault(str(link).strip(), set()).add(user.pk)
        if not users:
            return result
        taken = set(
            ExternalUser.objects.filter(source=source, user_id__in=list(users)).values_list("user_id", flat=True)
        )
        for remote in remotes:
            candidates: set[int] = set()
            for key, remote_values in per_remote[remote.key].items():
                for value in remote_values:
                    value = value.strip().lower() if key in ("email", "username") else value
                    candidates |= found.get(key, {}).get(value, set())
            candidates -= taken
            if len(candidates) == 1:
                result[remote.key] = users[candidates.pop()]
            elif len(candidates) > 1:
                result[remote.key] = LinkError(
                    _("%(count)d existing users match this member (%(keys)s); none was linked.")
                    % {"count": len(candidates), "keys": ", ".join(sorted(per_remote[remote.key]))}
                )
        return result

    @staticmethod
    def _comparable_values(values: dict[str, list[str]]) -> dict[str, list[str]]:
        """``values`` without what may not be compared (also when a subclass's link_values returns it)."""
        kept = {key: [v for v in vals if v and comparable(v)] for key, vals in values.items()}
        return {key: vals for key, vals in kept.items() if vals}

    def _link_candidates(self, key: str, field: str, values: set[str]) -> Iterable[Any]:
        """The Django users whose ``field`` holds one of ``values``, each annotated with ``_link``."""
        model = self.get_user_model()
        if key == "email" and self._link_calls > 1:
            # A large run: the email column has no index, so scan it once per run, not once per batch.
            index = self._email_index(field)
            pks = {pk for v in values for pk in index.get(v, ())}
            return model._default_manager.filter(pk__in=pks).annotate(_link=Lower(field)) if pks else []
        if key in ("email", "username"):
            # Compared case-insensitively: emails, and usernames matched against case-insensitive userids.
            return model._default_manager.annotate(_link=Lower(field)).filter(
                _link__in={v.strip().lower() for v in values}
            )
        return model._default_manager.filter(**{f"{field}__in": values}).annotate(_link=Lower(field))

    def _email_index(self, field: str) -> dict[str, list[int]]:
        """Lower-cased email -> user pks of every user with an email, read once per adapter instance (run)."""
        index = self.__dict__.get("_email_index_cache")
        if index is None:
            index = {}
            rows = self.get_user_model()._default_manager.exclude(**{f"{field}__isnull": True}).exclude(**{field: ""})
            for pk, email in rows.values_list("pk", field).iterator(chunk_size=10000):
                if comparable(email.strip()):
                    index.setdefault(email.strip().lower(), []).append(pk)
            self._email_index_cache = index
        return index


def get_adapter() -> DefaultWeComAdapter:
    """Return an instance of the adapter named by ``WECOM_SYNC["ADAPTER"]``."""
    path = app_settings.ADAPTER
    cls = _adapter_cache.get(path)
    if cls is None:
        cls = _adapter_cache[path] = import_string(path)
    return cls()
