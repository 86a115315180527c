"""Tags (标签) in the WeCom simulator: ``tag/list``, ``tag/get``, tag mutations and ``update_tag`` events.

Shapes follow shared/wecom-protocol.md §7: tag/list answers ``taglist[{tagid, tagname}]``; tag/get answers
``tagname``, ``userlist[{userid, name}]`` and ``partylist[ids]``, leaving out silently what the app may not see.
A mixin of ``WeComSimulator``: it uses the simulator's organisation, lock, visibility and event delivery.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: tag/get and the tag mutations answer this for an unknown tag id.
INVALID_TAG = 40068


def _join(values: Iterable[Any]) -> str:
    return ",".join(str(v) for v in values)


class TagSimulation:
    """The tag part of WeComSimulator (mixed in; not used on its own)."""

    # Provided by WeComSimulator.
    org: Any
    _lock: Any

    def _visible(self, kind: str) -> set[int] | None:  # pragma: no cover - WeComSimulator's
        raise NotImplementedError

    def _emit(self, change_type: str, fields: list[tuple[str, Any]], deliver: bool) -> str:  # pragma: no cover
        raise NotImplementedError

    # -- the API ------------------------------------------------------------------------------------
    def _tag_list(self, query: dict[str, str], body: bytes, kind: str) -> tuple[int, bytes]:
        from .server import _ok

        return _ok({"taglist": [
            {"tagid": tag["tagid"], "tagname": tag["tagname"]} for _id, tag in sorted(self.org.tags.items())
        ]})

    def _tag_get(self, query: dict[str, str], body: bytes, kind: str) -> tuple[int, bytes]:
        from .server import _error, _ok

        try:
            tag_id = int(query.get("tagid", ""))
        except ValueError:
            return _error(INVALID_TAG)
        tag = self.org.tags.get(tag_id)
        if tag is None:
            return _error(INVALID_TAG)
        visible = self._visible(kind)
        users = []
        for userid in tag["userlist"]:
            user = self.org.users.get(userid)
            if user is None:
                continue
            if visible is not None and not visible.intersection(user.get("department") or ()):
                continue
            users.append({"userid": userid, "name": user.get("name", "")})
        parties = [d for d in tag["partylist"] if d in self.org.departments and (visible is None or d in visible)]
        return _ok({"tagname": tag["tagname"], "userlist": users, "partylist": parties})

    # -- queries ------------------------------------------------------------------------------------
    def tag_members(self, tag_id: int) -> set[str]:
        """Return the userids a tag reaches: the members it lists and those of its departments' subtrees."""
        tag = self.org.tags.get(int(tag_id))
        if tag is None:
            return set()
        members = {u for u in tag["userlist"] if u in self.org.users}
        for dept_id in tag["partylist"]:
            if dept_id in self.org.departments:
                for sub in self.org.subtree(dept_id):
                    members.update(self.org.members(sub))
        return members

    # -- mutations ----------------------------------------------------------------------------------
    def _tag(self, tag_id: int) -> dict[str, Any]:
        from .server import SimulatorError

        tag = self.org.tags.get(int(tag_id))
        if tag is None:
            raise SimulatorError(INVALID_TAG, f"tag {tag_id} not found")
        return tag

    def _tag_targets(self, users: Iterable[str], departments: Iterable[int]) -> tuple[list[str], list[int]]:
        from .server import SimulatorError

        userids = []
        for userid in users:
            user = self.org.find_user(userid)
            if user is None:
                raise SimulatorError(60111, f"userid {userid!r} not found")
            userids.append(user["userid"])
        dept_ids = [int(d) for d in departments]
        missing = [d for d in dept_ids if d not in self.org.departments]
        if missing:
            raise SimulatorError(60123, f"unknown departments {missing}")
        return userids, dept_ids

    def add_tag(self, name: str, *, tag_id: int | None = None, users: Iterable[str] = (),
                departments: Iterable[int] = (), event: bool = False, deliver: bool = True) -> int:
        """Create a tag and return its id. WeCom announces new tags (``create_tag``) only to some kinds of
        app: pass ``event=True`` to emit one."""
        from .server import SimulatorError

        with self._lock:
            if not name:
                raise SimulatorError(40058, "tagname is required")
            new_id = int(tag_id) if tag_id is not None else max(self.org.tags, default=0) + 1
            if new_id in self.org.tags:
                raise SimulatorError(40071, f"tag {new_id} already exists")
            userids, dept_ids = self._tag_targets(users, departments)
            self.org.tags[new_id] = {"tagid": new_id, "tagname": name, "userlist": userids, "partylist": dept_ids}
        if event:
            self._emit("create_tag", [("TagId", new_id)], deliver)
        return new_id

    def update_tag(self, tag_id: int, *, name: str | None = None, add_users: Iterable[str] = (),
                   remove_users: Iterable[str] = (), add_departments: Iterable[int] = (),
                   remove_departments: Iterable[int] = (), deliver: bool = True) -> str:
        """Rename a tag and/or change its members and departments; emit ``update_tag``."""
        with self._lock:
            tag = self._tag(tag_id)
            added_users, added_depts = self._tag_targets(add_users, add_departments)
            gone_keys = {u.lower() for u in remove_users}
            gone_depts = {int(d) for d in remove_departments}
            removed_users = [u for u in tag["userlist"] if u.lower() in gone_keys]
            removed_depts = [d for d in tag["partylist"] if d in gone_depts]
            added_users = [u for u in added_users if u not in tag["userlist"]]
            added_depts = [d for d in added_depts if d not in tag["partylist"]]
            if name:
                tag["tagname"] = name
            tag["userlist"] = [u for u in tag["userlist"] if u not in removed_users] + added_users
            tag["partylist"] = [d for d in tag["partylist"] if d not in removed_depts] + added_depts
            fields: list[tuple[str, Any]] = [("TagId", int(tag["tagid"]))]
            for field, values in (("AddUserItems", added_users), ("DelUserItems", removed_users),
                                  ("AddPartyItems", added_depts), ("DelPartyItems", removed_depts)):
                if values:
                    fields.append((field, _join(values)))
        return self._emit("update_tag", fields, deliver)

    def delete_tag(self, tag_id: int, *, event: bool = False, deliver: bool = True) -> None:
        """Delete a tag. WeCom announces deletions (``delete_tag``) only to some kinds of app: pass
        ``event=True`` to emit one."""
        with self._lock:
            tag = self._tag(tag_id)
            del self.org.tags[tag["tagid"]]
        if event:
            self._emit("delete_tag", [("TagId", int(tag["tagid"]))], deliver)

    def add_tag_users(self, tag_id: int, userlist: Iterable[str] = (), partylist: Iterable[int] = (), *,
                      deliver: bool = True) -> str:
        """Add members and departments to a tag, as WeCom's tag/addtagusers does; emit ``update_tag``."""
        return self.update_tag(tag_id, add_users=userlist, add_departments=partylist, deliver=deliver)

    def del_tag_users(self, tag_id: int, userlist: Iterable[str] = (), partylist: Iterable[int] = (), *,
                      deliver: bool = True) -> str:
        """Remove members and departments from a tag, as WeCom's tag/deltagusers does; emit ``update_tag``."""
        return self.update_tag(tag_id, remove_users=userlist, remove_departments=partylist, deliver=deliver)

    def _forget_in_tags(self, userid: str | None = None, new_userid: str | None = None,
                        department_id: int | None = None) -> None:
        """Keep tags consistent when a member is renamed or deleted, or a department is deleted."""
        for tag in self.org.tags.values():
            if userid is not None and userid in tag["userlist"]:
                kept = [u for u in tag["userlist"] if new_userid or u != userid]
                tag["userlist"] = [new_userid if u == userid else u for u in kept]
            if department_id is not None and department_id in tag["partylist"]:
                tag["partylist"] = [d for d in tag["partylist"] if d != department_id]
