"""A deterministic, in-memory WeCom organisation: departments and members in the API's own JSON shapes.

``generate_organisation`` builds one from a seed; the same arguments always give the same organisation.
Indexes (children, members, list_id rows) are built lazily and dropped by ``Organisation.invalidate()``,
which every simulator mutation calls.
"""

from __future__ import annotations

import random
import threading
from typing import Any

#: Fields that apps created after 2022-06-20 no longer receive (shared/wecom-protocol.md §2).
RESTRICTED_USER_FIELDS = (
    "avatar",
    "thumb_avatar",
    "gender",
    "mobile",
    "email",
    "biz_mail",
    "qr_code",
    "address",
)

#: WeCom allows at most 15 department levels, the root included.
MAX_DEPTH = 15

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
_SURNAME_PINYIN = (
    "wang li zhang liu chen yang huang zhao wu zhou xu sun ma zhu hu guo he gao lin luo zheng liang xie song "
    "tang xu han feng deng cao peng zeng xiao tian dong yuan pan yu jiang cai yu du ye cheng su wei lv ding "
    "ren shen"
).split()
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红鹏辉玲燕晨宇浩然子轩欣怡梓涵"
_LATIN_FIRST = (
    "Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Leo Mia Noah Olivia Paul Quinn Rose Sam "
    "Tina Uma Victor Wendy Xavier Yara Zoe"
).split()
_LATIN_LAST = (
    "Smith Brown Garcia Miller Davis Wilson Moore Taylor Anderson Thomas Jackson White Harris Martin "
    "Thompson Young King Wright Lopez Hill"
).split()
_DEPT_NAMES = (
    ("研发中心", "R&D"),
    ("产品部", "Product"),
    ("销售部", "Sales"),
    ("市场部", "Marketing"),
    ("财务部", "Finance"),
    ("人力资源部", "HR"),
    ("法务部", "Legal"),
    ("运营部", "Operations"),
    ("客户成功部", "Customer Success"),
    ("质量保障部", "QA"),
    ("基础架构组", "Infrastructure"),
    ("数据平台组", "Data Platform"),
    ("华东分公司", "East China Branch"),
    ("华南分公司", "South China Branch"),
    ("海外事业部", "International"),
)
_POSITIONS = ("工程师", "高级工程师", "产品经理", "经理", "总监", "设计师", "销售代表", "会计", "Engineer",
              "Team Lead", "Analyst", "")


class Organisation:
    """Departments (id -> department/get dict), users (userid -> user/get dict) and tags (tag id ->
    ``{"tagid", "tagname", "userlist": [userids], "partylist": [ids]}``) of one simulated corp."""

    def __init__(
        self,
        departments: dict[int, dict[str, Any]] | None = None,
        users: dict[str, dict[str, Any]] | None = None,
        *,
        restricted_fields: bool = False,
        tags: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        self.departments: dict[int, dict[str, Any]] = departments if departments is not None else {}
        self.users: dict[str, dict[str, Any]] = users if users is not None else {}
        self.tags: dict[int, dict[str, Any]] = tags if tags is not None else {}
        self.restricted_fields = restricted_fields
        self._lock = threading.RLock()
        self._index: _Index | None = None

    def __repr__(self) -> str:
        return f"Organisation(departments={len(self.departments)}, users={len(self.users)})"

    # -- indexes ------------------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Drop the indexes; call after changing ``departments`` or ``users`` directly."""
        with self._lock:
            self._index = None

    @property
    def index(self) -> _Index:
        """The current indexes, rebuilt if the organisation changed."""
        index = self._index
        if index is None:
            with self._lock:
                if self._index is None:
                    self._index = _Index(self)
                index = self._index
        return index

    # -- queries ------------------------------------------------------------------------------------
    def find_user(self, userid: str) -> dict[str, Any] | None:
        """Return a user by userid, compared case-insensitively as WeCom does."""
        key = self.index.userid_by_key.get((userid or "").lower())
        return self.users.get(key) if key is not None else None

    def children(self, department_id: int) -> list[int]:
        """Return the direct child department ids of a department."""
        return list(self.index.children.get(department_id, ()))

    def subtree(self, department_id: int) -> list[int]:
        """Return a department id and all its descendants' ids, parents before children."""
        return self.index.subtree(department_id)

    def members(self, department_id: int) -> list[str]:
        """Return the userids of a department's direct members."""
        return list(self.index.members.get(department_id, ()))

    def depth(self, department_id: int) -> int:
        """Return the level of a department (the root is level 1)."""
        level = 0
        current: int | None = department_id
        while current in self.departments:
            level += 1
            current = self.departments[current].get("parentid")
        return level


class _Index:
    """Lookup tables derived from an Organisation; immutable once built."""

    def __init__(self, org: Organisation) -> None:
        self.children: dict[int, list[int]] = {}
        for dept in sorted(org.departments.values(), key=lambda d: (-int(d.get("order") or 0), d["id"])):
            parent = dept.get("parentid")
            if parent in org.departments and parent != dept["id"]:
                self.children.setdefault(parent, []).append(dept["id"])
        self.members: dict[int, list[str]] = {}
        self.userid_by_key: dict[str, str] = {}
        rows: list[dict[str, Any]] = []
        for userid, user in org.users.items():
            self.userid_by_key[userid.lower()] = userid
            for dept_id in user.get("department") or ():
                self.members.setdefault(dept_id, []).append(userid)
                rows.append({"userid": userid, "department": dept_id})
        self.list_id_rows = rows
        self._subtrees: dict[int, list[int]] = {}
        self._root = next((d["id"] for d in sorted(org.departments.values(), key=lambda d: d["id"])
                           if d.get("parentid") in (0, None)), None)
        self._looping = [d for d in sorted(org.departments) if self._loops(org, d)]

    @staticmethod
    def _loops(org: Organisation, department_id: int) -> bool:
        seen: set[int] = set()
        current: Any = department_id
        while current in org.departments:
            if current in seen:
                return True
            seen.add(current)
            current = org.departments[current].get("parentid")
        return False

    def subtree(self, department_id: int) -> list[int]:
        cached = self._subtrees.get(department_id)
        if cached is None:
            cached = []
            stack = [department_id]
            seen: set[int] = set()
            while stack:
                current = stack.pop()
                if current in seen:
                    continue
                seen.add(current)
                cached.append(current)
                stack.extend(reversed(self.children.get(current, ())))
            if department_id == self._root:
                # Departments whose parents loop (only a test sets that up) still belong to the directory:
                # listed after the rest, as a WeCom with broken data would list them.
                for start in self._looping:
                    if start not in seen:
                        cached.extend(d for d in self.subtree(start) if d not in seen)
                        seen.update(cached)
            self._subtrees[department_id] = cached
        return cached


def _department_name(rng: random.Random, dept_id: int) -> tuple[str, str]:
    zh, en = _DEPT_NAMES[rng.randrange(len(_DEPT_NAMES))]
    return f"{zh}{dept_id}", f"{en} {dept_id}"


def _build_tree(departments: int, max_depth: int, rng: random.Random) -> dict[int, dict[str, Any]]:
    """Create department dicts: the root (id 1), one chain to max_depth, the rest under random parents."""
    tree: dict[int, dict[str, Any]] = {
        1: {"id": 1, "name": "模拟科技有限公司", "name_en": "Simulated Tech Ltd", "department_leader": [],
            "parentid": 0, "order": 100000000},
    }
    depth = {1: 1}
    open_parents = [1]  # departments that may still receive children (depth < max_depth)
    next_id = 2
    chain_parent = 1
    while next_id <= departments:
        if depth[chain_parent] < max_depth:
            parent = chain_parent  # first build one chain to the deepest level, so depth is exercised
        else:
            parent = open_parents[rng.randrange(len(open_parents))]
        name, name_en = _department_name(rng, next_id)
        tree[next_id] = {"id": next_id, "name": name, "name_en": name_en, "department_leader": [],
                         "parentid": parent, "order": rng.randrange(1, 100000000)}
        depth[next_id] = depth[parent] + 1
        if depth[next_id] < max_depth:
            open_parents.append(next_id)
        if parent == chain_parent and depth[chain_parent] < max_depth:
            chain_parent = next_id
        next_id += 1
    return tree


def _make_user(i: int, rng: random.Random, dept_ids: list[int], status: int) -> dict[str, Any]:
    surname_index = rng.randrange(len(_SURNAMES))
    if rng.random() < 0.75:
        name = _SURNAMES[surname_index] + _GIVEN[rng.randrange(len(_GIVEN))]
        if rng.random() < 0.5:
            name += _GIVEN[rng.randrange(len(_GIVEN))]
        userid = f"{_SURNAME_PINYIN[surname_index]}{i}"
        if i % 10 == 3:
            userid = userid.capitalize()  # mixed case: userids compare case-insensitively
    else:
        first = _LATIN_FIRST[rng.randrange(len(_LATIN_FIRST))]
        last = _LATIN_LAST[rng.randrange(len(_LATIN_LAST))]
        name = f"{first} {last}"
        userid = f"{first}.{last}{i}" if i % 10 == 7 else f"{first.lower()}.{last.lower()}{i}"
    count = 1 if rng.random() < 0.8 else rng.choice((2, 2, 3))
    departments: list[int] = []
    while len(departments) < count and len(departments) < len(dept_ids):
        dept = dept_ids[rng.randrange(len(dept_ids))]
        if dept not in departments:
            departments.append(dept)
    mobile = f"1{rng.randrange(30, 99)}{rng.randrange(10000000, 99999999)}"
    user: dict[str, Any] = {
        "userid": userid,
        "name": name,
        "department": departments,
        "order": [rng.randrange(0, 100000) for _ in departments],
        "position": _POSITIONS[rng.randrange(len(_POSITIONS))],
        "mobile": mobile,
        "gender": str(rng.randrange(0, 3)),
        "email": f"{userid.lower()}@example.com",
        "biz_mail": f"{userid.lower()}@sim.wecom.work",
        "is_leader_in_dept": [0 for _ in departments],
        "direct_leader": [],
        "avatar": f"https://wework.qpic.cn/wwpic/{i}/0",
        "thumb_avatar": f"https://wework.qpic.cn/wwpic/{i}/100",
        "telephone": "" if i % 3 else f"020-{rng.randrange(1000000, 9999999)}",
        "alias": "" if i % 4 else name,
        "address": "" if i % 5 else "广州市海珠区新港中路397号",
        "main_department": departments[0],
        "status": status,
        "qr_code": f"https://open.work.weixin.qq.com/wwopen/userQRCode?vcode=sim{i}",
        "external_position": "",
        "extattr": {"attrs": []},
    }
    if i % 10 == 0:
        user["extattr"] = {"attrs": [
            {"type": 0, "name": "工号", "text": {"value": f"E{i:06d}"}},
            {"type": 1, "name": "主页", "web": {"url": f"https://example.com/u/{i}", "title": "主页"}},
        ]}
    return user


def generate_organisation(
    users: int = 100,
    departments: int = 10,
    *,
    seed: int = 0,
    max_depth: int = 6,
    restricted_fields: bool = False,
) -> Organisation:
    """Return a deterministic organisation of ``users`` members in ``departments`` departments (root included)."""
    if departments < 1:
        raise ValueError("An organisation has at least the root department.")
    max_depth = max(1, min(int(max_depth), MAX_DEPTH))
    rng = random.Random(seed)
    tree = _build_tree(departments, max_depth, rng)
    dept_ids = list(tree)
    # Every status appears as soon as there are four users; then mostly activated members.
    status_cycle = (1, 2, 4, 5)
    people: dict[str, dict[str, Any]] = {}
    for i in range(users):
        if i < len(status_cycle):
            status = status_cycle[i]
        else:
            roll = rng.random()
            status = 1 if roll < 0.85 else 2 if roll < 0.90 else 4 if roll < 0.97 else 5
        user = _make_user(i, rng, dept_ids, status)
        people[user["userid"]] = user
    # Leaders: in most departments with members, one or two of them lead.
    members: dict[int, list[dict[str, Any]]] = {}
    for user in people.values():
        for dept in user["department"]:
            members.setdefault(dept, []).append(user)
    for dept_id, dept_members in members.items():
        if rng.random() < 0.3:
            continue
        leaders = dept_members[: 1 + (len(dept_members) > 5 and rng.random() < 0.3)]
        tree[dept_id]["department_leader"] = [leader["userid"] for leader in leaders]
        for leader in leaders:
            leader["is_leader_in_dept"][leader["department"].index(dept_id)] = 1
    for user in people.values():
        leaders = tree[user["main_department"]]["department_leader"]
        user["direct_leader"] = [uid for uid in leaders if uid != user["userid"]][:5]
    if restricted_fields:
        for user in people.values():
            for field in RESTRICTED_USER_FIELDS:
                user.pop(field, None)
    return Organisation(tree, people, restricted_fields=restricted_fields, tags=_make_tags(tree, people, seed))


#: Tags of a generated organisation: (tag id, name, members, departments) as counts.
_TAG_SHAPES = ((1, "财务审批", 3, 1), (2, "值班工程师", 4, 0), (3, "管理层", 0, 1), (4, "新员工", 2, 0))


def _make_tags(tree: dict[int, dict[str, Any]], people: dict[str, dict[str, Any]], seed: int) -> dict[int, dict]:
    """A few tags listing members and departments, from their own random stream (the rest is unchanged)."""
    rng = random.Random(f"tags-{seed}")
    userids = sorted(people)
    departments = sorted(d for d in tree if d != 1) or [1]
    tags: dict[int, dict[str, Any]] = {}
    for tag_id, name, user_count, dept_count in _TAG_SHAPES:
        tags[tag_id] = {
            "tagid": tag_id,
            "tagname": name,
            "userlist": rng.sample(userids, min(user_count, len(userids))),
            "partylist": rng.sample(departments, min(dept_count, len(departments))),
        }
    return tags
