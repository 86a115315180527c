"""The callback inbox: parse WeCom's envelope and event XML, compute the dedupe key, store the event.

No HTTP request objects here: the view reads the request and calls these functions, so the same code
serves tests, the simulator and any other transport. XML is parsed with defusedxml, and DTDs (and so
entity expansion and external entities) are refused outright: WeCom never sends one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from django.db import IntegrityError, transaction

from .exceptions import WeComError, gettext_noop
from .models import CallbackEvent, SyncSource
from .sync.snapshot import normalize_userid

logger = logging.getLogger("wecom_sync.callback")

#: change_contact change types about members, and about departments.
USER_CHANGE_TYPES = frozenset({"create_user", "update_user", "delete_user"})
DEPARTMENT_CHANGE_TYPES = frozenset({"create_party", "update_party", "delete_party"})
#: ... and about tags (create_tag and delete_tag reach only some kinds of app).
TAG_CHANGE_TYPES = frozenset({"create_tag", "update_tag", "delete_tag"})

# Nested elements (ExtAttr/Item/Text/Value, BatchJob/...) are kept up to this depth; deeper content is
# dropped, so a hostile document cannot drive the conversion into deep recursion.
_MAX_DEPTH = 6
_MAX_FIELD_CHARS = 4096


class CallbackXMLError(WeComError):
    """A callback body or decrypted event is not well-formed, safe XML."""

    hint = gettext_noop("The callback body is not the XML WeCom sends.")


class MissingEncryptError(WeComError):
    """The callback envelope has no <Encrypt> element (or it is empty)."""

    hint = gettext_noop("The callback body has no encrypted payload.")


@dataclass(frozen=True, slots=True)
class Envelope:
    """The outer XML of a POSTed callback."""

    encrypt: str
    to_user_name: str = ""
    agent_id: str = ""


def _parse_xml(data: bytes | str) -> Element:
    try:
        return fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise CallbackXMLError(f"Forbidden XML construct: {type(exc).__name__}.") from exc
    except (ParseError, ValueError, LookupError, UnicodeError, TypeError) as exc:
        raise CallbackXMLError("Malformed XML.") from exc


def _child_text(root: Element, tag: str) -> str:
    child = root.find(tag)
    return (child.text or "").strip() if child is not None else ""


def parse_envelope(body: bytes | str) -> Envelope:
    """Parse the POST body; raise CallbackXMLError or MissingEncryptError."""
    root = _parse_xml(body)
    encrypt = _child_text(root, "Encrypt")
    if not encrypt:
        raise MissingEncryptError("The envelope has no Encrypt element.")
    return Envelope(
        encrypt=encrypt,
        to_user_name=_child_text(root, "ToUserName")[:128],
        agent_id=_child_text(root, "AgentID")[:32],
    )


def _element_value(element: Element, depth: int) -> Any:
    children = list(element)
    if not children:
        return (element.text or "").strip()[:_MAX_FIELD_CHARS]
    if depth >= _MAX_DEPTH:
        return {}
    out: dict[str, Any] = {}
    for child in children:
        if not isinstance(child.tag, str):
            continue
        value = _element_value(child, depth + 1)
        if child.tag in out:
            previous = out[child.tag]
            out[child.tag] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[child.tag] = value
    return out


def parse_event(xml_text: str) -> dict[str, Any]:
    """Return the decrypted event XML as a dict (leaf elements as text, repeated elements as lists)."""
    root = _parse_xml(xml_text.encode("utf-8") if isinstance(xml_text, str) else xml_text)
    value = _element_value(root, 0)
    if not isinstance(value, dict):
        # <xml/> or <xml>text</xml>: well-formed but carries no fields.
        return {}
    return value


def _text(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def event_object(fields: dict[str, Any]) -> tuple[str, str]:
    """Return (object type, object id) of an event: ("user", normalised userid), ("department", id), ..."""
    change_type = _text(fields, "ChangeType")
    if change_type in USER_CHANGE_TYPES:
        return "user", normalize_userid(_text(fields, "UserID"))
    if change_type in DEPARTMENT_CHANGE_TYPES:
        return "department", _text(fields, "Id")
    if change_type in TAG_CHANGE_TYPES:
        return "tag", _text(fields, "TagId")
    if _text(fields, "Event") == "batch_job_result":
        job = fields.get("BatchJob")
        return "batch_job", _text(job, "JobId") if isinstance(job, dict) else ""
    return "", _text(fields, "UserID") or _text(fields, "Id")


def dedupe_key(fields: dict[str, Any]) -> str:
    """Return the idempotency key of an event: a SHA-256 digest of the whole decrypted message.

    WeCom's retries re-send the same message, so they share the key. Two different changes to one member
    within the same second (same CreateTime, ChangeType and UserID) differ in some field and so do not:
    dropping a distinct change loses it, while applying a true duplicate twice is harmless (every event
    re-fetches its object). The fields are serialised canonically (sorted keys), so the key depends on the
    content only.
    """
    canonical = json.dumps(fields, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _create_time(fields: dict[str, Any]) -> int:
    try:
        value = int(_text(fields, "CreateTime") or 0)
    except ValueError:
        return 0
    return value if -(2**62) < value < 2**62 else 0


def store_event(source: SyncSource, fields: dict[str, Any]) -> tuple[CallbackEvent, bool]:
    """Store a decrypted event in the inbox; return (event, created). A redelivery returns the stored row.

    Database errors other than the dedupe constraint propagate (the view answers 500 and WeCom retries).
    """
    key = dedupe_key(fields)
    _, object_id = event_object(fields)
    event = CallbackEvent(
        source=source,
        dedupe_key=key,
        event=_text(fields, "Event")[:64],
        change_type=_text(fields, "ChangeType")[:64],
        object_id=object_id[:64],
        create_time=_create_time(fields),
        payload=fields,
    )
    try:
        with transaction.atomic():
            event.save()
    except IntegrityError:
        existing = CallbackEvent.objects.filter(source=source, dedupe_key=key).first()
        if existing is None:
            # Not the dedupe constraint: a real database failure.
            raise
        logger.info(
            "wecom_sync.callback.duplicate",
            extra={"source": source.slug, "event_id": existing.pk, "change_type": existing.change_type},
        )
        return existing, False
    return event, True
