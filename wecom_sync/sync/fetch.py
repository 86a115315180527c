"""Fetch strategies: read one source's directory (departments, members, tags) into a Snapshot."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..client import WeComClient, new_session
from ..conf import app_settings
from ..exceptions import WeComError
from .snapshot import RemoteDepartment, RemoteTag, RemoteUser, Snapshot, TagSnapshot, normalize_userid

# the fetch logs under the client's logger, as documented in docs/deployment.md
logger = logging.getLogger("wecom_sync.client")

T = TypeVar("T")
R = TypeVar("R")


def _capture(fn: Callable[[T], R]) -> Callable[[T], R | WeComError]:
    def run(item: T) -> R | WeComError:
        try:
            return fn(item)
        except WeComError as exc:
            return exc

    return run


class _Fetch:
    """One snapshot fetch: the clients, the snapshot being filled, and progress reporting."""

    def __init__(self, source: Any, progress: Callable[[int, int], None] | None) -> None:
        self.source = source
        self.root = int(source.root_department_id or 1)
        self.snapshot = Snapshot(root_department_id=self.root)
        self.progress = progress
        self.done = 0
        self.total = 0
        self.session = new_session()
        self.clients: list[WeComClient] = []

    def client(self, credential: str) -> WeComClient:
        client = WeComClient.from_source(self.source, credential=credential, session=self.session)
        self.clients.append(client)
        return client

    def close(self) -> None:
        self.snapshot.api_calls = sum(c.api_calls for c in self.clients)
        self.session.close()

    def plan(self, count: int) -> None:
        self.total += count
        self.tick(0)

    def tick(self, count: int = 1) -> None:
        self.done += count
        if self.progress is not None:
            self.progress(self.done, self.total)

    def problem(self, scope: str, error: WeComError) -> None:
        errcode = getattr(error, "errcode", None)
        self.snapshot.add_problem(scope, errcode, str(error))
        logger.warning("wecom_sync.client.fetch_problem", extra={"scope": scope, "errcode": errcode})

    def parallel(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterable[tuple[T, R | WeComError]]:
        """Run fn over items with FETCH_CONCURRENCY threads; yield (item, result or error) in item order.

        Progress is reported from the calling thread only (callbacks may touch the database).
        """
        if not items:
            return
        workers = min(app_settings.FETCH_CONCURRENCY, len(items))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wecom-fetch") as pool:
            for item, result in zip(items, pool.map(_capture(fn), items), strict=True):
                yield item, result
                self.tick()

    def add_users(self, items: Iterable[dict[str, Any]]) -> None:
        users = self.snapshot.users
        for item in items:
            key = normalize_userid(str(item.get("userid") or ""))
            if key and key not in users:
                users[key] = RemoteUser.from_api(item)

    # -- strategy "app" -----------------------------------------------------------------------------
    def by_app(self) -> None:
        app = self.client("app")
        app.get_access_token()  # bad credentials fail here, before anything else
        departments = app.list_departments(self.root)
        for item in departments:
            dept = RemoteDepartment.from_api(item)
            self.snapshot.departments[dept.id] = dept
        ids = list(self.snapshot.departments)
        self.plan(len(ids))
        for dept_id, result in self.parallel(app.list_users, ids):
            if isinstance(result, WeComError):
                self.problem(f"department:{dept_id}", result)
            else:
                self.add_users(result)

    # -- strategy "contact_sync" --------------------------------------------------------------------
    def by_contact_sync(self) -> None:
        ids_client = self.client("contact_sync")
        # Details need the app secret (the contact-sync secret gets 48009 from new IPs since 2022-08-15);
        # without one, try the contact-sync secret itself (IPs configured before then still may).
        detail = self.client("app") if self.source.secret else ids_client
        ids_client.get_access_token()
        if detail is not ids_client:
            detail.get_access_token()
        simple = ids_client.simplelist_departments(self.root)
        subtree = [int(item["id"]) for item in simple]
        self._department_details(detail, subtree)
        self._members(ids_client, detail, subtree)

    def _department_details(self, detail: WeComClient, subtree: list[int]) -> None:
        """One department/list call, then department/get for any department it did not return."""
        try:
            listed = {int(item["id"]): item for item in detail.list_departments(self.root)}
        except WeComError as exc:  # e.g. outside the app's scope: department/get per id says which
            logger.info("wecom_sync.client.department_list_fallback",
                        extra={"errcode": getattr(exc, "errcode", None)})
            listed = {}
        missing = [dept_id for dept_id in subtree if dept_id not in listed]
        self.plan(len(missing))
        for dept_id, result in self.parallel(detail.get_department, missing):
            if isinstance(result, WeComError):
                self.problem(f"department:{dept_id}", result)
            else:
                listed[dept_id] = result
        for dept_id in subtree:
            if dept_id in listed:
                self.snapshot.departments[dept_id] = RemoteDepartment.from_api(listed[dept_id])

    def _members(self, ids_client: WeComClient, detail: WeComClient, subtree: list[int]) -> None:
        """user/list_id says who is there; user/list per department gives the details in bulk, and user/get
        fills in anyone the lists did not return."""
        in_scope = set(subtree)
        expected: dict[str, str] | None
        try:
            rows = ids_client.list_user_ids()
        except WeComError as exc:
            self.problem("user/list_id", exc)
            expected, member_departments = None, subtree
        else:
            expected = {}
            populated: set[int] = set()
            for row in rows:
                dept_id = int(row.get("department") or 0)
                if dept_id in in_scope:
                    expected.setdefault(normalize_userid(str(row.get("userid") or "")), str(row["userid"]))
                    populated.add(dept_id)
            member_departments = [dept_id for dept_id in subtree if dept_id in populated]
        self.plan(len(member_departments))
        for dept_id, result in self.parallel(detail.list_users, member_departments):
            if isinstance(result, WeComError):
                if expected is None:
                    self.problem(f"department:{dept_id}", result)
                else:
                    logger.info("wecom_sync.client.user_list_fallback",
                                extra={"department_id": dept_id, "errcode": getattr(result, "errcode", None)})
            else:
                self.add_users(result)
        if expected is None:
            return
        unfetched = [userid for key, userid in expected.items() if key not in self.snapshot.users]
        self.plan(len(unfetched))
        for userid, member in self.parallel(detail.get_user, unfetched):
            if isinstance(member, WeComError):
                self.problem(f"user:{userid}", member)
            else:
                self.add_users([member])

    # -- tags ---------------------------------------------------------------------------------------
    def tags(self) -> None:
        """Read every tag the app can see (tag/list), then each tag's members (tag/get).

        The app secret reads tags when there is one (it sees the tags in its visible range); otherwise the
        contact-sync secret. A failure is a tag problem: the directory stays complete.
        """
        tags = self.snapshot.tags = TagSnapshot()
        client = self.client("app" if self.source.secret else "contact_sync")
        try:
            listed = client.list_tags()
        except WeComError as exc:
            tags.add_problem("tag/list", getattr(exc, "errcode", None), str(exc))
            logger.warning("wecom_sync.client.fetch_problem",
                           extra={"scope": "tag/list", "errcode": getattr(exc, "errcode", None)})
            return
        for item in listed:
            try:
                tags.listed[int(item["tagid"])] = str(item.get("tagname") or "")
            except (KeyError, TypeError, ValueError):
                continue
        ids = sorted(tags.listed)
        self.plan(len(ids))
        for tag_id, result in self.parallel(client.get_tag, ids):
            if isinstance(result, WeComError):
                tags.add_problem(f"tag:{tag_id}", getattr(result, "errcode", None), str(result))
                logger.warning("wecom_sync.client.fetch_problem",
                               extra={"scope": f"tag:{tag_id}", "errcode": getattr(result, "errcode", None)})
            else:
                result.setdefault("tagname", tags.listed[tag_id])
                tags.tags[tag_id] = RemoteTag.from_api(tag_id, result)


def fetch_snapshot(
    source: Any, *, progress: Callable[[int, int], None] | None = None, tags: bool | None = None
) -> Snapshot:
    """Fetch the departments and members of source.root_department_id's subtree with its fetch strategy.

    Per-department and per-member errors are recorded as snapshot problems (``snapshot.complete`` is then
    False); only an error that stops everything (bad credentials, unknown root) is raised. Tags are read
    too when ``tags`` is true (default: ``WECOM_SYNC["SYNC_TAGS"]``), into ``snapshot.tags``.
    """
    fetch = _Fetch(source, progress)
    strategy = str(source.effective_fetch_strategy)
    started = time.monotonic()
    try:
        if strategy == "contact_sync":
            fetch.by_contact_sync()
        else:
            fetch.by_app()
        if app_settings.SYNC_TAGS if tags is None else tags:
            fetch.tags()
    finally:
        fetch.close()
    snapshot = fetch.snapshot
    logger.info(
        "wecom_sync.client.snapshot_fetched",
        extra={
            "strategy": strategy,
            "departments": len(snapshot.departments),
            "users": len(snapshot.users),
            "problems": len(snapshot.problems),
            "api_calls": snapshot.api_calls,
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    return snapshot
