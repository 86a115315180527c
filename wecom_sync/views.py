"""HTTP endpoints of wecom_sync: the WeCom callback receiver.

The receiver checks a request in a fixed order; each failure has its own status code and its own stable
log key (``wecom_sync.callback.<reason>``). Only a database failure answers 500, so that WeCom retries;
no malformed, hostile or forged input can. An accepted event is stored before it is acknowledged, and
its processing is scheduled after the commit.

Until the signature is checked, a known and an unknown slug answer the same (so slugs cannot be probed):
the checks that do not depend on the source come first, and a missing, disabled or unconfigured source
answers 403 like a bad signature. A source whose stored secrets cannot be decrypted answers 503, so that
WeCom retries once the keys are fixed.
"""

from __future__ import annotations

import logging
import re
from functools import partial

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.views import APIView

from .callbacks import CallbackXMLError, MissingEncryptError, parse_envelope, parse_event, store_event
from .conf import app_settings
from .crypto import WeComCrypto
from .events import enqueue_event
from .exceptions import CryptoError, InvalidKeyError, ReceiveIdError, SignatureError
from .internal.secretbox import SecretDecryptionError
from .models import SyncSource

logger = logging.getLogger("wecom_sync.callback")

#: What a URL verification may echo: WeCom's echostr plaintext is a short random string of letters and
#: digits. Anything else (e.g. a captured event's Encrypt replayed as echostr) is never echoed: the endpoint
#: must not decrypt arbitrary ciphertexts for whoever asks.
ECHOSTR_PLAINTEXT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class _Reject(Exception):
    """Stop handling a callback with a status code and a stable log key."""

    def __init__(self, status: int, key: str, **extra: object) -> None:
        super().__init__(key)
        self.status = status
        self.key = key
        self.extra = extra


class _PlainRenderer(BaseRenderer):
    media_type = "text/plain"
    format = "txt"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):  # noqa: ANN001, ANN201
        return b"" if data is None else str(data).encode("utf-8")


class _IgnoreAccept(BaseContentNegotiation):
    """Never answer 406: WeCom's Accept header must not decide whether a callback is received."""

    def select_parser(self, request, parsers):  # noqa: ANN001, ANN201
        return None

    def select_renderer(self, request, renderers, format_suffix=None):  # noqa: ANN001, ANN201
        renderer = renderers[0]
        return renderer, renderer.media_type


def _read_body(request: HttpRequest, limit: int) -> bytes:
    """Read at most limit bytes of the body; raise _Reject(413) if it is longer (declared or real)."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    try:
        declared_length = int(declared)
    except ValueError:
        declared_length = 0
    if declared_length > limit:
        raise _Reject(413, "body_too_large", declared=declared_length, limit=limit)
    body = request.read(limit + 1)
    if len(body) > limit:
        raise _Reject(413, "body_too_large", limit=limit)
    return body


def _params(request: HttpRequest, names: tuple[str, ...]) -> list[str]:
    values = [request.GET.get(name, "") for name in names]
    missing = [name for name, value in zip(names, values, strict=True) if not value]
    if missing:
        raise _Reject(400, "missing_params", missing=",".join(missing))
    return values


def _source_crypto(slug: str) -> tuple[SyncSource, WeComCrypto]:
    source = SyncSource.objects.filter(slug=slug).first()
    if source is None:
        raise _Reject(403, "unknown_source")
    if not source.enabled:
        raise _Reject(403, "source_disabled")
    try:
        token, aes_key = source.token, source.encoding_aes_key
    except SecretDecryptionError as exc:
        raise _Reject(503, "secrets_unreadable") from exc
    if not token or not aes_key:
        raise _Reject(403, "source_not_configured")
    try:
        crypto = WeComCrypto(token, aes_key, source.corp_id)
    except InvalidKeyError as exc:
        raise _Reject(403, "source_not_configured") from exc
    return source, crypto


def _crypto_reject(exc: CryptoError) -> _Reject:
    if isinstance(exc, SignatureError):
        return _Reject(403, "bad_signature")
    if isinstance(exc, ReceiveIdError):
        return _Reject(403, "wrong_receive_id")
    return _Reject(403, "undecryptable", error=type(exc).__name__)


class CallbackView(APIView):
    """Receive WeCom callbacks for one source: URL verification (GET) and contact events (POST)."""

    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []
    parser_classes: list = []
    renderer_classes = [_PlainRenderer]
    content_negotiation_class = _IgnoreAccept
    http_method_names = ["get", "post", "head"]

    def _reject(self, request: HttpRequest, slug: str, reject: _Reject) -> HttpResponse:
        level = logging.ERROR if reject.status >= 500 else logging.WARNING
        logger.log(
            level,
            "wecom_sync.callback.%s",
            reject.key,
            extra={"source": slug, "status": reject.status, "remote_addr": request.META.get("REMOTE_ADDR", ""),
                   **reject.extra},
        )
        return HttpResponse(status=reject.status, content_type="text/plain; charset=utf-8")

    def get(self, request, slug: str) -> HttpResponse:  # noqa: ANN001 - DRF Request
        """URL verification: verify and decrypt echostr; answer its plaintext and nothing else."""
        try:
            signature, timestamp, nonce, echostr = _params(
                request, ("msg_signature", "timestamp", "nonce", "echostr")
            )
            _source, crypto = _source_crypto(slug)
            try:
                plaintext = crypto.verify_url(signature, timestamp, nonce, echostr)
            except CryptoError as exc:
                raise _crypto_reject(exc) from exc
            if not ECHOSTR_PLAINTEXT_RE.match(plaintext):
                raise _Reject(403, "echostr_not_plain", length=len(plaintext))
        except _Reject as reject:
            return self._reject(request, slug, reject)
        logger.info("wecom_sync.callback.url_verified", extra={"source": slug})
        return HttpResponse(plaintext.encode("utf-8"), content_type="text/plain; charset=utf-8")

    def post(self, request, slug: str) -> HttpResponse:  # noqa: ANN001 - DRF Request
        """A contact event: verify, decrypt, store once, schedule processing, answer 200 with no body."""
        try:
            signature, timestamp, nonce = _params(request, ("msg_signature", "timestamp", "nonce"))
            body = _read_body(request._request, app_settings.CALLBACK_MAX_BODY_BYTES)
            try:
                envelope = parse_envelope(body)
            except MissingEncryptError as exc:
                raise _Reject(400, "missing_encrypt") from exc
            except CallbackXMLError as exc:
                raise _Reject(400, "bad_xml", error=str(exc)) from exc
            source, crypto = _source_crypto(slug)
            try:
                plaintext = crypto.decrypt_message(signature, timestamp, nonce, envelope.encrypt)
            except CryptoError as exc:
                raise _crypto_reject(exc) from exc
            try:
                fields = parse_event(plaintext)
            except CallbackXMLError as exc:
                raise _Reject(400, "bad_event_xml", error=str(exc)) from exc
        except _Reject as reject:
            return self._reject(request, slug, reject)

        # A database error here propagates: Django answers 500 and WeCom delivers again.
        event, created = store_event(source, fields)
        if created:
            transaction.on_commit(partial(enqueue_event, event.pk))
            logger.info(
                "wecom_sync.callback.stored",
                extra={"source": slug, "event_id": event.pk, "change_type": event.change_type},
            )
        return HttpResponse(b"", status=200, content_type="text/plain; charset=utf-8")

