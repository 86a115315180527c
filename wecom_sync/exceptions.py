"""Typed errors of wecom_sync. Plain Python: no Django import, no secret in any message."""

from __future__ import annotations

from collections.abc import Callable


def gettext_noop(message: str) -> str:
    """Mark a message for translation (``makemessages`` extracts it) without importing Django."""
    return message


#: Translates a marked message at display time; the app's ``ready()`` installs Django's gettext.
_translator: Callable[[str], str] = gettext_noop


def set_translator(translator: Callable[[str], str]) -> None:
    """Install the function that translates the hints and error texts below (Django's gettext)."""
    global _translator
    _translator = translator


def translate(message: str) -> str:
    """Return a message marked with ``gettext_noop`` in the active language (unchanged if none)."""
    return _translator(message) if message else message


# Plain-language hints for the errcodes an administrator is likely to meet. Each says what to do.
ERRCODE_HINTS: dict[int, str] = {
    -1: gettext_noop("WeCom is busy; the call is retried automatically. If it persists, try again later."),
    40001: gettext_noop("The Secret is wrong, was reset, or its app is disabled. Copy the Secret again from the "
        "WeCom console (App Management, or Contacts Sync for the contact-sync secret)."),
    40003: gettext_noop("The userid is not in the directory (the member left or was deleted) or has a bad format."),
    40013: gettext_noop("The Corp ID is wrong. Copy it from My Company, Company Information in the WeCom console."),
    40014: gettext_noop("The access token is invalid; a new one is fetched automatically."),
    40091: gettext_noop("The Secret does not belong to this Corp ID."),
    41001: gettext_noop("The access token is missing; a new one is fetched automatically."),
    42001: gettext_noop("The access token expired; a new one is fetched automatically."),
    45009: gettext_noop("WeCom's call-frequency limit was reached; the call is retried after a pause. Lower the sync "
        "frequency if this happens often."),
    45033: gettext_noop("WeCom's concurrency limit was reached; the call is retried. Lower FETCH_CONCURRENCY."),
    48002: gettext_noop("This app's token is not allowed to call this API. Reading the directory needs a self-built "
        "app whose visibility covers the departments; id enumeration needs the contact-sync secret."),
    48009: gettext_noop("The contact-sync assistant may not read directory details from a newly added IP. Set the "
        "self-built app's Secret on the source for details; keep the contact-sync secret only for ids."),
    50002: gettext_noop("The member is outside the app's visibility scope. Widen the app's visible range."),
    40068: gettext_noop("The tag does not exist (any more). A full sync removes it from the site."),
    60011: gettext_noop("No privilege: the department or member is outside the app's visible range. In the WeCom "
        "console, set the app's visible range to the root department."),
    60020: gettext_noop("This server's IP is not a trusted IP of the app. Add it under the app's Trusted IPs in the "
        "WeCom console and wait about a minute."),
    60111: gettext_noop("The userid does not exist: the member left, was deleted, or is not visible to the app."),
    60123: gettext_noop("The department id does not exist in the directory (it was deleted or is not visible)."),
    81013: gettext_noop("None of the message's recipients can be reached: unknown userids, departments or tags, or "
        "all outside the app's visible range. Widen the app's visible range in the WeCom console."),
    301002: gettext_noop("The token has no rights over this AgentId. Check that the AgentId and the Secret belong to "
        "the same app."),
}

#: errcodes that mean "drop the access token, get a new one and retry once".
TOKEN_ERRCODES = frozenset({40014, 42001, 41001})
#: errcodes that are worth retrying after a pause.
TRANSIENT_ERRCODES = frozenset({-1, 45009, 45033, 6000})


class WeComError(Exception):
    """Base class of every error raised by wecom_sync."""

    hint: str = ""


class WeComAPIError(WeComError):
    """The WeCom API answered with a non-zero errcode."""

    def __init__(self, errcode: int, errmsg: str = "", hint: str | None = None, *, api: str = "") -> None:
        self.errcode = int(errcode)
        self.errmsg = str(errmsg or "")
        self.hint = hint if hint is not None else ERRCODE_HINTS.get(self.errcode, "")
        self.api = api
        super().__init__(self.errcode, self.errmsg)

    @property
    def is_token_error(self) -> bool:
        return self.errcode in TOKEN_ERRCODES

    @property
    def is_transient(self) -> bool:
        return self.errcode in TRANSIENT_ERRCODES

    def __str__(self) -> str:
        values = {"code": self.errcode, "api": self.api, "errmsg": self.errmsg}
        if self.api:
            text = translate(gettext_noop("WeCom error %(code)s from %(api)s: %(errmsg)s")) % values
        else:
            text = translate(gettext_noop("WeCom error %(code)s: %(errmsg)s")) % values
        return f"{text} ({translate(self.hint)})" if self.hint else text

    def __repr__(self) -> str:
        return f"WeComAPIError(errcode={self.errcode!r}, errmsg={self.errmsg!r}, api={self.api!r})"


class WeComTransportError(WeComError):
    """The WeCom API could not be reached, or answered with an HTTP error or a non-JSON body."""

    hint = gettext_noop("WeCom could not be reached. Check the API base URL, DNS and outbound firewall.")


class CryptoError(WeComError):
    """Base class of callback crypto failures."""


class InvalidKeyError(CryptoError):
    """The EncodingAESKey is not 43 characters that decode to 32 bytes."""

    hint = gettext_noop("The EncodingAESKey must be exactly 43 letters and digits, as shown in the WeCom console.")


class SignatureError(CryptoError):
    """The msg_signature does not match the token, timestamp, nonce and payload."""

    hint = gettext_noop("The request was not signed with this source's Token.")


class DecryptError(CryptoError):
    """The encrypted payload is not valid base64, AES-CBC, padding or framing."""

    hint = gettext_noop("The payload could not be decrypted with this source's EncodingAESKey.")


class ReceiveIdError(CryptoError):
    """The decrypted message was addressed to another corp (receive id mismatch)."""

    hint = gettext_noop("The message was encrypted for another Corp ID.")


class EncryptError(CryptoError):
    """The message could not be encrypted."""
