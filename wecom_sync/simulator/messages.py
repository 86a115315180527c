"""App messages in the WeCom simulator: ``message/send`` records each message it accepts (shared/wecom-protocol.md
§10), so tests can inspect who would have received what.

Unknown userids, and members outside the app's visible range, come back in ``invaliduser``; members listed in
``unlicensed_users`` in ``unlicenseduser``; unknown departments and tags in ``invalidparty`` / ``invalidtag``.
When no target is valid WeCom answers errcode 81013 (with the same lists) and nothing is recorded.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

#: The most userids, and departments or tags, that one message/send accepts.
MAX_USERS = 1000
MAX_PARTIES = 100
MAX_TAGS = 100

MESSAGE_TYPES = ("text", "markdown", "textcard")


def _split(value: Any) -> list[str]:
    if not value:
        return []
    return [v.strip() for v in str(value).split("|") if v.strip()]


class MessageSimulation:
    """The app-message part of WeComSimulator (mixed in; not used on its own)."""

    # Provided by WeComSimulator.
    org: Any
    agent_id: int
    #: Every message accepted by message/send, oldest first (dicts; see ``_message_send``).
    messages: list[dict[str, Any]]
    #: userids (compared case-insensitively) reported in ``unlicenseduser`` instead of receiving messages.
    unlicensed_users: set[str]

    def _visible(self, kind: str) -> set[int] | None:  # pragma: no cover - WeComSimulator's
        raise NotImplementedError

    def tag_members(self, tag_id: int) -> set[str]:  # pragma: no cover - TagSimulation's
        raise NotImplementedError

    def messages_to(self, userid: str) -> list[dict[str, Any]]:
        """Return the recorded messages that reached ``userid``."""
        key = userid.lower()
        return [m for m in self.messages if key in {r.lower() for r in m["recipients"]}]

    def _message_send(self, query: dict[str, str], body: bytes, kind: str) -> tuple[int, bytes]:
        from .server import APP, _error, _ok, errmsg

        if kind != APP:
            return _error(48002)
        try:
            request = json.loads(body.decode("utf-8")) if body else None
        except (UnicodeDecodeError, ValueError):
            request = None
        if not isinstance(request, dict):
            return _error(47001)
        try:
            agent_id = int(request.get("agentid"))  # type: ignore[arg-type]  # None and junk raise below
        except (TypeError, ValueError):
            return _error(40056)
        if agent_id != self.agent_id:
            return _error(301002)
        msgtype = request.get("msgtype")
        if msgtype not in MESSAGE_TYPES:
            return _error(40008)
        content = request.get(msgtype)
        if not isinstance(content, dict):
            return _error(40058)
        if msgtype == "textcard":
            if not all(content.get(k) for k in ("title", "description", "url")):
                return _error(40058)
        elif not str(content.get("content") or "").strip():
            return _error(44004)
        users, parties = _split(request.get("touser")), _split(request.get("toparty"))
        tags = _split(request.get("totag"))
        if not (users or parties or tags):
            return _error(82001)
        if len(users) > MAX_USERS or len(parties) > MAX_PARTIES or len(tags) > MAX_TAGS:
            return _error(40058)

        visible = self._visible(kind)

        def reachable(userid: str) -> bool:
            user = self.org.find_user(userid)
            return user is not None and (visible is None or bool(visible.intersection(user.get("department") or ())))

        recipients: set[str] = set()
        invalid_users: list[str] = []
        if users == ["@all"]:
            recipients.update(u for u in self.org.users if reachable(u))
        else:
            for userid in users:
                if reachable(userid):
                    recipients.add(self.org.find_user(userid)["userid"])
                else:
                    invalid_users.append(userid)
        invalid_parties: list[str] = []
        valid_targets = len(recipients)
        for party in parties:
            dept_id = int(party) if party.isdigit() else -1
            if dept_id not in self.org.departments or (visible is not None and dept_id not in visible):
                invalid_parties.append(party)
                continue
            valid_targets += 1
            for sub in self.org.subtree(dept_id):
                recipients.update(u for u in self.org.members(sub) if reachable(u))
        invalid_tags: list[str] = []
        for tag in tags:
            tag_id = int(tag) if tag.isdigit() else -1
            if tag_id not in self.org.tags:
                invalid_tags.append(tag)
                continue
            valid_targets += 1
            recipients.update(u for u in self.tag_members(tag_id) if reachable(u))
        unlicensed_keys = {u.lower() for u in self.unlicensed_users}
        unlicensed = sorted(u for u in recipients if u.lower() in unlicensed_keys)
        recipients.difference_update(unlicensed)
        answer: dict[str, Any] = {}
        for name, values in (("invaliduser", invalid_users), ("invalidparty", invalid_parties),
                             ("invalidtag", invalid_tags), ("unlicenseduser", unlicensed)):
            if values:
                answer[name] = "|".join(values)
        if not valid_targets:
            return 200, json.dumps({"errcode": 81013, "errmsg": errmsg(81013), **answer},
                                   ensure_ascii=False).encode("utf-8")
        msgid = secrets.token_hex(16)
        self.messages.append({
            "msgid": msgid,
            "time": time.time(),
            "agentid": agent_id,
            "msgtype": msgtype,
            "content": content,
            "touser": users,
            "toparty": parties,
            "totag": tags,
            "recipients": sorted(recipients),
            **{k: v.split("|") for k, v in answer.items()},
        })
        return _ok({**answer, "msgid": msgid, "response_code": secrets.token_hex(8)})
