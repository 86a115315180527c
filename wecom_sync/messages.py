"""App messages (应用消息): send text, markdown or a text card to Django users, departments or tags through a
source's self-built app (``message/send``, shared/wecom-protocol.md §10).

Django users are reached through their ``ExternalUser`` mapping of that source; those without one are listed
in ``MessageResult.unmapped`` and cost no call. Recipients go out in chunks of 1,000 userids (100 departments,
100 tags) per call, each call retried like every other client call; whom WeCom could not reach
(``invaliduser``, ``unlicenseduser``, ``invalidparty``, ``invalidtag``) is reported in the result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.utils.translation import gettext as _

from .exceptions import WeComAPIError, WeComError
from .models import ExternalDepartment, ExternalTag, ExternalUser, SyncSource
from .sync.snapshot import normalize_userid

logger = logging.getLogger("wecom_sync.messages")

#: The most userids, and departments or tags, one message/send call takes.
MAX_USERS_PER_CALL = 1000
MAX_PARTIES_PER_CALL = 100
MAX_TAGS_PER_CALL = 100
#: message/send errcode when every target was invalid (the lists still say which).
ALL_TARGETS_INVALID = 81013

MESSAGE_TYPES = ("text", "markdown", "textcard")


@dataclass
class MessageResult:
    """What send_message did: who it addressed, who it could not reach, and WeCom's message ids."""

    #: userids the message was addressed to (mapped Django users and userids given directly).
    userids: list[str] = field(default_factory=list)
    #: Django users with no mapping (no ExternalUser of this source, or a removed one): not addressed.
    unmapped: list[Any] = field(default_factory=list)
    #: userids WeCom reported it could not reach: ``invaliduser`` (unknown, outside the app's visible
    #: range) and ``unlicenseduser``.
    unreachable: list[str] = field(default_factory=list)
    #: department ids and tag ids WeCom reported invalid (``invalidparty``, ``invalidtag``).
    invalid_departments: list[int] = field(default_factory=list)
    invalid_tags: list[int] = field(default_factory=list)
    #: WeCom's msgid of each accepted call.
    msgids: list[str] = field(default_factory=list)
    #: message/send calls made.
    calls: int = 0
    #: When a later chunk failed after earlier ones were sent: the userids of the failed chunks, and why.
    failed_userids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def sent(self) -> bool:
        """Whether WeCom accepted at least one call."""
        return bool(self.msgids)

    @property
    def reached(self) -> list[str]:
        """The addressed userids WeCom did not report unreachable (departments and tags not expanded)."""
        gone = {normalize_userid(u) for u in (*self.unreachable, *self.failed_userids)}
        return [u for u in self.userids if normalize_userid(u) not in gone]

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly summary (Django users as primary keys)."""
        return {
            "userids": list(self.userids),
            "unmapped": [getattr(u, "pk", u) for u in self.unmapped],
            "unreachable": list(self.unreachable),
            "invalid_departments": list(self.invalid_departments),
            "invalid_tags": list(self.invalid_tags),
            "msgids": list(self.msgids),
            "calls": self.calls,
            "failed_userids": list(self.failed_userids),
            "errors": list(self.errors),
        }


class MessageError(WeComError, ValueError):
    """A message that cannot be sent as asked (no content, two kinds of content, no AgentId...)."""


def _content(text: str | None, markdown: str | None, textcard: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    given = [(kind, value) for kind, value in (("text", text), ("markdown", markdown), ("textcard", textcard))
             if value not in (None, "", {})]
    if len(given) != 1:
        error = MessageError(_("Give exactly one of text, markdown or textcard."))
        error.hint = _("A WeCom app message has one content type.")
        raise error
    kind, value = given[0]
    if kind == "textcard":
        if not isinstance(value, dict) or not all(str(value.get(k) or "").strip() for k in ("title", "url")):
            error = MessageError(_("A text card needs a title and a URL (and a description)."))
            error.hint = _("Pass textcard={'title': ..., 'description': ..., 'url': ...}.")
            raise error
        card = {k: str(v) for k, v in value.items() if k in ("title", "description", "url", "btntxt") and v}
        card.setdefault("description", card["title"])
        return kind, card
    if not isinstance(value, str):
        raise MessageError(_("The %(kind)s content must be a string.") % {"kind": kind})
    return kind, {"content": value}


def _ids(items: Iterable[Any], model: type, attr: str, source: SyncSource) -> list[int]:
    out: list[int] = []
    for item in items:
        if isinstance(item, model):
            if getattr(item, "source_id", None) != source.pk:
                raise MessageError(_("%(object)s belongs to another source.") % {"object": item})
            value = getattr(item, attr)
        else:
            value = item
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise MessageError(_("%(value)r is not a WeCom id.") % {"value": value}) from None
        if number not in out:
            out.append(number)
    return out


def resolve_users(source: SyncSource, users: Iterable[Any]) -> tuple[list[str], list[Any]]:
    """Return (userids, unmapped Django users) for Django users, ExternalUser rows or userid strings."""
    userids: list[str] = []
    accounts: list[Any] = []
    for item in users:
        if isinstance(item, str):
            if item.strip():
                userids.append(item.strip())
        elif isinstance(item, ExternalUser):
            if item.source_id != source.pk:
                raise MessageError(_("%(object)s belongs to another source.") % {"object": item})
            if not item.is_removed:
                userids.append(item.userid)
        elif getattr(item, "pk", None) is not None:
            accounts.append(item)
        else:
            raise MessageError(_("%(value)r is neither a Django user, a WeCom user nor a userid.") % {"value": item})
    unmapped: list[Any] = []
    if accounts:
        mapped = dict(ExternalUser.objects.filter(
            source=source, is_removed=False, user_id__in=[u.pk for u in accounts]).values_list("user_id", "userid"))
        for account in accounts:
            if account.pk in mapped:
                userids.append(mapped[account.pk])
            else:
                unmapped.append(account)
    seen: set[str] = set()
    unique = []
    for userid in userids:
        if normalize_userid(userid) not in seen:
            seen.add(normalize_userid(userid))
            unique.append(userid)
    return unique, unmapped


def _split(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v) for v in value if str(v)]
    return [v for v in str(value or "").split("|") if v]


def _as_ints(values: Sequence[str]) -> list[int]:
    return [int(v) for v in values if v.strip().lstrip("-").isdigit()]


def _chunks(userids: list[str], parties: list[int], tags: list[int]) -> list[tuple[list[str], list[int], list[int]]]:
    calls = max(
        -(-len(userids) // MAX_USERS_PER_CALL), -(-len(parties) // MAX_PARTIES_PER_CALL),
        -(-len(tags) // MAX_TAGS_PER_CALL),
    )
    return [
        (userids[i * MAX_USERS_PER_CALL:(i + 1) * MAX_USERS_PER_CALL],
         parties[i * MAX_PARTIES_PER_CALL:(i + 1) * MAX_PARTIES_PER_CALL],
         tags[i * MAX_TAGS_PER_CALL:(i + 1) * MAX_TAGS_PER_CALL])
        for i in range(calls)
    ]


def send_message(
    source: SyncSource,
    *,
    users: Iterable[Any] = (),
    departments: Iterable[Any] = (),
    tags: Iterable[Any] = (),
    text: str | None = None,
    markdown: str | None = None,
    textcard: dict[str, Any] | None = None,
) -> MessageResult:
    """Send an app message of ``source``'s app to Django users, userids, departments and tags.

    Exactly one of ``text``, ``markdown`` or ``textcard`` (a dict with ``title``, ``description``, ``url``
    and optionally ``btntxt``). Nobody to address means no call. Raises ``MessageError`` for bad input and
    ``WeComError`` when nothing could be sent; once a chunk was sent, a later failure is reported in
    ``errors`` and ``failed_userids`` instead (so a caller never re-sends what already went out).
    """
    msgtype, content = _content(text, markdown, textcard)
    if not source.agent_id:
        error = MessageError(_("The source has no AgentId."))
        error.hint = _("Enter the AgentId of the self-built app in the source's settings.")
        raise error
    userids, unmapped = resolve_users(source, users)
    parties = _ids(departments, ExternalDepartment, "department_id", source)
    tag_ids = _ids(tags, ExternalTag, "tag_id", source)
    result = MessageResult(userids=userids, unmapped=unmapped)
    if not (userids or parties or tag_ids):
        logger.info("wecom_sync.messages.nobody", extra={"source": source.slug, "unmapped": len(unmapped)})
        return result

    from .client import WeComClient

    with WeComClient.from_source(source) as client:
        for chunk_users, chunk_parties, chunk_tags in _chunks(userids, parties, tag_ids):
            body: dict[str, Any] = {"agentid": int(source.agent_id), "msgtype": msgtype, msgtype: content}
            if chunk_users:
                body["touser"] = "|".join(chunk_users)
            if chunk_parties:
                body["toparty"] = "|".join(str(p) for p in chunk_parties)
            if chunk_tags:
                body["totag"] = "|".join(str(t) for t in chunk_tags)
            result.calls += 1
            try:
                answer = client.send_message(body)
            except WeComAPIError as exc:
                if exc.errcode == ALL_TARGETS_INVALID:
                    # Nobody in this chunk could be reached; WeCom's lists (not kept by the error) would say
                    # the same: every target of the chunk.
                    result.unreachable += chunk_users
                    result.invalid_departments += chunk_parties
                    result.invalid_tags += chunk_tags
                    continue
                if not result.sent:
                    raise
                result.failed_userids += chunk_users
                result.errors.append(str(exc))
                continue
            except WeComError as exc:
                if not result.sent:
                    raise
                result.failed_userids += chunk_users
                result.errors.append(str(exc))
                continue
            result.msgids.append(str(answer.get("msgid") or ""))
            result.unreachable += _split(answer.get("invaliduser")) + _split(answer.get("unlicenseduser"))
            result.invalid_departments += _as_ints(_split(answer.get("invalidparty")))
            result.invalid_tags += _as_ints(_split(answer.get("invalidtag")))
    logger.info(
        "wecom_sync.messages.sent",
        extra={"source": source.slug, "msgtype": msgtype, "userids": len(userids), "departments": len(parties),
               "tags": len(tag_ids), "calls": result.calls, "unreachable": len(result.unreachable),
               "unmapped": len(unmapped), "failed": len(result.failed_userids)},
    )
    return result


__all__ = ["MessageError", "MessageResult", "resolve_users", "send_message"]
