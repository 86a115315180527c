"""Forms of wecom_sync: the sync source form with masked, keep-if-blank secrets."""

from __future__ import annotations

import re
from typing import Any

import django
from django import forms
from django.utils.translation import gettext_lazy as _

from .client import api_host_allowed
from .conf import app_settings
from .crypto import decode_aes_key, is_valid_token
from .exceptions import InvalidKeyError
from .fields import EncryptedTextField
from .models import SECRETS_UNREADABLE_MESSAGE, SyncSource

CORP_ID_RE = re.compile(r"^w[wx][A-Za-z0-9]{8,30}$")
SECRET_FIELDS = ("secret", "contact_sync_secret", "token", "encoding_aes_key")
#: Secrets that may be cleared (the app Secret is required).
CLEARABLE = ("contact_sync_secret", "token", "encoding_aes_key")
#: URL fields take "https" for an address typed without a scheme (the option exists from Django 5.0 on).
URL_FIELD_OPTIONS: dict[str, Any] = {"assume_scheme": "https"} if django.VERSION >= (5, 0) else {}


def mask(value: str) -> str:
    """Return a display mask for a stored secret: whether it is set and at most its last 4 characters."""
    if not value:
        return str(_("not set"))
    tail = value[-4:] if len(value) >= 16 else ""
    return "•" * 8 + tail


def secret_field(name: str) -> EncryptedTextField:
    """Return the model field of one of the source's secrets."""
    field = SyncSource._meta.get_field(name)
    if not isinstance(field, EncryptedTextField):
        raise TypeError(f"SyncSource.{name} is not an encrypted field")
    return field


class SecretInput(forms.PasswordInput):
    """A password input that never renders the stored value back."""

    def __init__(self, attrs: dict | None = None) -> None:
        super().__init__(attrs={"autocomplete": "new-password", "spellcheck": "false", **(attrs or {})},
                         render_value=False)


class SyncSourceForm(forms.ModelForm):
    """Create or edit a sync source. Secret fields left blank keep their stored value."""

    api_base_url = forms.URLField(
        label=SyncSource._meta.get_field("api_base_url").verbose_name,
        help_text=_("Leave as is unless you use a private deployment, a proxy or the bundled simulator. Changing "
                    "it (or the Corp ID) requires entering every secret again: stored secrets are never sent to "
                    "a new address."),
        initial=SyncSource._meta.get_field("api_base_url").default,
        **URL_FIELD_OPTIONS,
    )
    clear_contact_sync_secret = forms.BooleanField(label=_("Clear the contact-sync secret"), required=False)
    clear_token = forms.BooleanField(label=_("Clear the callback Token"), required=False)
    clear_encoding_aes_key = forms.BooleanField(label=_("Clear the EncodingAESKey"), required=False)

    class Meta:
        model = SyncSource
        fields = [
            "name", "slug", "corp_id", "agent_id", "secret", "contact_sync_secret", "token", "encoding_aes_key",
            "api_base_url", "enabled", "root_department_id", "fetch_strategy", "sync_interval_minutes",
            "removal_policy", "removal_threshold_count", "removal_threshold_percent",
            "login_enabled", "login_agent_id", "login_silent_in_client",
        ]
        widgets = {
            "secret": SecretInput(),
            "contact_sync_secret": SecretInput(),
            "token": SecretInput(
                attrs={"maxlength": 32, "data-wecom-generate": "token", "data-wecom-label": _("Generate")}
            ),
            "encoding_aes_key": SecretInput(
                attrs={"maxlength": 43, "data-wecom-generate": "aeskey", "data-wecom-label": _("Generate")}
            ),
        }
        error_messages = {
            "agent_id": {"invalid": _("AgentId is a whole number: copy it from the app's page in the WeCom console.")},
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Stored secrets that cannot be decrypted with the configured keys (they must be entered again).
        self.unreadable = {name for name in SECRET_FIELDS if not secret_field(name).is_readable(self.instance)}
        self._stored = {
            name: "" if name in self.unreadable else (getattr(self.instance, name, "") or "") for name in SECRET_FIELDS
        }
        self._had = {name: bool(self.instance.__dict__.get(name)) for name in SECRET_FIELDS}
        editing = self.instance.pk is not None
        for name in SECRET_FIELDS:
            field = self.fields.get(name)
            if field is None:  # a read-only view of the form
                continue
            field.required = False
            if isinstance(field, forms.CharField):
                field.strip = True
            if editing and name in self.unreadable:
                field.help_text = f"{SECRETS_UNREADABLE_MESSAGE}. {field.help_text or ''}"
            elif editing:
                field.help_text = _("Stored: %(mask)s. Leave blank to keep it. %(help)s") % {
                    "mask": mask(self._stored[name]), "help": field.help_text or "",
                }
        if not editing:
            for name in CLEARABLE:
                self.fields.pop(f"clear_{name}", None)

    def _field_changed(self, name: str) -> bool:
        if name not in self.fields:
            return False
        bound = self[name]  # no field of this form shows a hidden initial: compare with the initial value
        return bound.field.has_changed(bound.initial, bound.data)

    @property
    def changed_data(self) -> list[str]:
        """Changed fields; a secret counts only when its value really changed (never for a blank "keep")."""
        final = getattr(self, "_final_secrets", None)
        names = []
        for name in self.fields:
            if name.startswith("clear_"):
                continue
            if name in SECRET_FIELDS:
                if final is not None and (final[name] != self._stored[name] or name in self.unreadable):
                    names.append(name)
            elif self._field_changed(name):
                names.append(name)
        return names

    def clean_api_base_url(self) -> str:
        value = (self.cleaned_data.get("api_base_url") or "").strip().rstrip("/")
        if value and not api_host_allowed(value):
            raise forms.ValidationError(
                _("This host is not allowed for the WeCom API. Allowed: %(hosts)s (the site's "
                  "WECOM_SYNC['API_HOSTS'] setting). The URL may have a path but no user, query or fragment.")
                % {"hosts": ", ".join(app_settings.API_HOSTS) or "-"},
                code="api_host",
            )
        return value

    def _new_or_stored(self, name: str) -> str:
        value = self.cleaned_data.get(name) or ""
        if value:
            return value
        if self.cleaned_data.get(f"clear_{name}"):
            return ""
        return self._stored[name]

    def clean_corp_id(self) -> str:
        value = (self.cleaned_data.get("corp_id") or "").strip()
        if not CORP_ID_RE.match(value):
            raise forms.ValidationError(
                _("A Corp ID starts with “ww” or “wx” followed by letters and digits, e.g. ww1a2b3c4d5e6f7a8b. "
                  "Copy it from My Company → Company Information (企业ID) in the WeCom console."),
                code="corp_id",
            )
        return value

    def clean_agent_id(self) -> int | None:
        value = self.cleaned_data.get("agent_id")
        if value is not None and value <= 0:
            raise forms.ValidationError(_("AgentId is a positive whole number, e.g. 1000002."), code="agent_id")
        return value

    def clean_login_agent_id(self) -> int | None:
        value = self.cleaned_data.get("login_agent_id")
        if value is not None and value <= 0:
            raise forms.ValidationError(_("AgentId is a positive whole number, e.g. 1000002."), code="agent_id")
        return value

    def clean_token(self) -> str:
        value = self.cleaned_data.get("token") or ""
        if value and not is_valid_token(value):
            raise forms.ValidationError(
                _("The Token is 1 to 32 letters and digits (no spaces or symbols)."), code="token"
            )
        return value

    def clean_encoding_aes_key(self) -> str:
        value = self.cleaned_data.get("encoding_aes_key") or ""
        if not value:
            return value
        if len(value) != 43:
            raise forms.ValidationError(
                _("The EncodingAESKey is exactly 43 characters; this one has %(n)d.") % {"n": len(value)},
                code="encoding_aes_key_length",
            )
        try:
            decode_aes_key(value)
        except InvalidKeyError as exc:
            raise forms.ValidationError(
                _("The EncodingAESKey must be 43 letters and digits that decode to a 32-byte key."),
                code="encoding_aes_key",
            ) from exc
        return value

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        final = {name: self._new_or_stored(name) for name in SECRET_FIELDS}
        if self.instance.pk is not None:
            moved = [n for n in ("api_base_url", "corp_id") if self._field_changed(n)]
            for name in SECRET_FIELDS:
                entered = bool(self.cleaned_data.get(name)) or bool(self.cleaned_data.get(f"clear_{name}"))
                if entered or not self._had[name] or name not in self.fields:
                    continue
                if moved:
                    # Stored secrets are bound to the address they were entered for: an admin who can edit
                    # the source but does not know its secrets must not redirect them to a host of their own.
                    self.add_error(name, forms.ValidationError(
                        _("You changed the API base URL or the Corp ID: enter this secret again (stored "
                          "secrets are never sent to a new address)."), code="reenter_secret",
                    ))
                elif name in self.unreadable:
                    self.add_error(name, forms.ValidationError(SECRETS_UNREADABLE_MESSAGE, code="unreadable"))
        if not final["secret"] and not final["contact_sync_secret"]:
            self.add_error("secret", forms.ValidationError(
                _("Enter the Secret of the self-built app (and optionally the contact-sync secret)."),
                code="secret_required",
            ))
        if bool(final["token"]) != bool(final["encoding_aes_key"]):
            self.add_error("encoding_aes_key" if final["token"] else "token", forms.ValidationError(
                _("The callback Token and EncodingAESKey go together: set both or neither."),
                code="callback_pair",
            ))
        if cleaned.get("login_enabled") and not (cleaned.get("login_agent_id") or cleaned.get("agent_id")):
            self.add_error("login_agent_id", forms.ValidationError(
                _("Sign-in with WeCom needs an AgentId: enter the app's AgentId above or here."),
                code="login_agent_id_required",
            ))
        self._final_secrets = final
        return cleaned

    def save(self, commit: bool = True) -> SyncSource:
        instance = super().save(commit=False)
        for name, value in self._final_secrets.items():
            setattr(instance, name, value)
        if commit:
            instance.save()
            self.save_m2m()
        return instance


class SendMessageForm(forms.Form):
    """The "Send a WeCom message" admin action's page: which source's app, what kind of message, what text."""

    MSGTYPES = (("text", _("Text")), ("markdown", _("Markdown")), ("textcard", _("Text card")))

    source = forms.ModelChoiceField(
        label=_("source"), queryset=SyncSource.objects.filter(enabled=True),
        help_text=_("The message is sent by this source's self-built app (its AgentId)."),
    )
    msgtype = forms.ChoiceField(label=_("type"), choices=MSGTYPES, initial="text")
    title = forms.CharField(label=_("title"), max_length=128, required=False,
                            help_text=_("Text cards only."))
    content = forms.CharField(label=_("content"), max_length=2048, widget=forms.Textarea(attrs={"rows": 6}))
    url = forms.URLField(label=_("link"), required=False,
                         help_text=_("Text cards only: the page the card opens."),
                         **URL_FIELD_OPTIONS)

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if cleaned.get("msgtype") == "textcard":
            for name in ("title", "url"):
                if not cleaned.get(name):
                    self.add_error(name, forms.ValidationError(_("A text card needs a title and a link."),
                                                               code="textcard"))
        return cleaned

    def message_content(self) -> dict:
        """Return the content keyword of ``send_message`` (``text=``, ``markdown=`` or ``textcard=``)."""
        data = self.cleaned_data
        if data["msgtype"] == "textcard":
            return {"textcard": {"title": data["title"], "description": data["content"], "url": data["url"]}}
        return {data["msgtype"]: data["content"]}
