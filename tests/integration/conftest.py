"""Fixtures of the production proof: real Celery worker processes on a Redis broker and the PostgreSQL test DB.

A worker is ``celery -A example_project worker`` started as a subprocess with a generated settings module
(tests.settings + the pytest-django test database + a Redis broker and a Redis cache + WECOM_SYNC
overrides), consuming a queue private to the test. The test process publishes to the same queue (the
live server's callbacks and ``tasks.*.delay``), so nothing else on the machine's Redis is disturbed.

Redis DB 13 of the machine's Redis is used (bench/callback.py uses 14, the unit tests 15) and flushed once
per test session. The "broker stopped" test gets its own redis-server on a free port.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.factories import AES_KEY, APP_SECRET, CONTACT_SECRET, TOKEN

ROOT = Path(__file__).resolve().parents[2]
#: Redis database of the integration tests on the machine's Redis.
INTEGRATION_REDIS_DB = 13
_flushed: set[str] = set()


def with_db(url: str, db: int) -> str:
    """Return a redis:// URL with its database number replaced."""
    base = url.rsplit("/", 1)[0] if url.count("/") >= 3 else url
    return f"{base}/{db}"


def reset_broker_pools(app: Any) -> None:
    """Forget every pooled broker connection of ``app`` (after its broker URL changed)."""
    from kombu import pools

    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    app.amqp._producer_pool = None
    pools.reset()


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def integration_redis(redis_url: str) -> str:
    """URL of the integration tests' Redis database, flushed once per session."""
    import redis

    url = with_db(redis_url, INTEGRATION_REDIS_DB)
    if url not in _flushed:
        redis.Redis.from_url(url).flushdb()
        _flushed.add(url)
    return url


@dataclass
class Broker:
    """Where the test process publishes tasks: a broker URL and a queue private to the test."""

    app: Any
    url: str
    queue: str

    def point_to(self, url: str) -> None:
        """Publish to another broker from now on."""
        self.url = url
        self.app.conf.broker_url = url
        reset_broker_pools(self.app)


@pytest.fixture
def broker(integration_redis: str) -> Iterator[Broker]:
    """Make this process publish Celery tasks for real (not eagerly) to a private queue on Redis."""
    from example_project.celery import app

    saved = (app.conf.task_always_eager, app.conf.broker_url, app.conf.broker_connection_timeout,
             app.conf.task_default_queue)
    queue = f"wecom-proof-{uuid.uuid4().hex[:10]}"
    app.conf.task_always_eager = False
    app.conf.broker_url = integration_redis
    app.conf.broker_connection_timeout = 1
    app.conf.task_default_queue = queue
    reset_broker_pools(app)
    try:
        yield Broker(app, integration_redis, queue)
    finally:
        (app.conf.task_always_eager, app.conf.broker_url, app.conf.broker_connection_timeout,
         app.conf.task_default_queue) = saved
        reset_broker_pools(app)


@dataclass
class Worker:
    """One ``celery worker`` subprocess."""

    process: subprocess.Popen
    nodename: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        """The end of the worker's log, for assertion messages."""
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the worker (and its pool children), as an OOM killer or a lost machine would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the worker: warm shutdown, then SIGKILL if it does not end."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass


def _settings_module(path: Path, *, db: dict[str, Any], broker_url: str, queue: str, cache_url: str,
                     cache_prefix: str, wecom: dict[str, Any]) -> None:
    path.write_text(
        "from tests.settings import *  # noqa: F403\n"
        f"DATABASES = {{'default': {{'ENGINE': {db['ENGINE']!r}, 'NAME': {db['NAME']!r}, 'USER': {db['USER']!r},"
        f" 'PASSWORD': {db['PASSWORD']!r}, 'HOST': {db['HOST']!r}, 'PORT': {db['PORT']!r}}}}}\n"
        f"CELERY_BROKER_URL = {broker_url!r}\n"
        "CELERY_TASK_ALWAYS_EAGER = False\n"
        f"CELERY_TASK_DEFAULT_QUEUE = {queue!r}\n"
        f"CACHES = {{'default': {{'BACKEND': 'django.core.cache.backends.redis.RedisCache', "
        f"'LOCATION': {cache_url!r}, 'KEY_PREFIX': {cache_prefix!r}}}}}\n"
        f"WECOM_SYNC = {{**WECOM_SYNC, **{wecom!r}}}\n"  # noqa: F405
        "LOGGING = {'version': 1, 'disable_existing_loggers': False,"
        " 'handlers': {'console': {'class': 'logging.StreamHandler'}},"
        " 'loggers': {'wecom_sync': {'handlers': ['console'], 'level': 'WARNING'}}}\n",
        encoding="utf-8",
    )


StartWorker = Callable[..., Worker]

#: What must never appear in a worker's log: a token or secret in a query string, or a known test secret.
_LEAK = re.compile(
    r"(access_token|corpsecret)=(?!\*\*\*)[^&\s'\"]+|sim-app-secret|sim-contact-secret|"
    + "|".join(re.escape(v) for v in (APP_SECRET, CONTACT_SECRET, TOKEN, AES_KEY))
)


@pytest.fixture
def start_worker(require_postgres, transactional_db, broker: Broker, tmp_path: Path) -> Iterator[StartWorker]:  # noqa: ANN001
    """Return start(concurrency=1, pool="solo", wecom=None, broker_url=None, wait=True) -> Worker.

    Workers share the test's queue, the test database and a Redis token cache (one key prefix per test);
    all are stopped at the end of the test, before the database is flushed.
    """
    from django.db import connection

    db = connection.settings_dict
    cache_prefix = f"proof-{uuid.uuid4().hex[:8]}"
    home_url = broker.url
    workers: list[Worker] = []

    def start(*, concurrency: int = 1, pool: str = "solo", wecom: dict[str, Any] | None = None,
              broker_url: str | None = None, wait: bool = True) -> Worker:
        index = len(workers)
        package = tmp_path / f"worker{index}"
        package.mkdir()
        _settings_module(package / "proof_worker_settings.py", db=db, broker_url=broker_url or broker.url,
                         queue=broker.queue, cache_url=broker.url if broker_url is None else broker_url,
                         cache_prefix=cache_prefix, wecom=wecom or {})
        nodename = f"proof{index}-{uuid.uuid4().hex[:6]}@localhost"
        log_path = tmp_path / f"worker{index}.log"
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "proof_worker_settings",
               "PYTHONPATH": f"{package}{os.pathsep}{ROOT}"}
        env.pop("CELERY_BROKER_URL", None)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "example_project", "worker", "--pool", pool,
                 "--concurrency", str(concurrency), "-Q", broker.queue, "-n", nodename, "--without-mingle",
                 "--without-gossip", "-l", "warning"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        worker = Worker(process, nodename, log_path)
        workers.append(worker)
        if wait:
            wait_ready(worker)
        return worker

    def wait_ready(worker: Worker) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                pytest.fail(f"the worker exited with {worker.process.returncode}:\n{worker.log_tail()}")
            replies = broker.app.control.ping(destination=[worker.nodename], timeout=0.5)
            if replies:
                return
        pytest.fail(f"the worker did not answer a ping within 60 s:\n{worker.log_tail()}")

    yield start
    for worker in workers:
        worker.stop()
    # The workers' own logs (warnings, errors, tracebacks) must not carry a secret either.
    for worker in workers:
        text = worker.log_path.read_text(encoding="utf-8", errors="replace") if worker.log_path.exists() else ""
        assert not _LEAK.search(text), f"a secret in the log of {worker.nodename}: {_LEAK.search(text).group(0)[:40]}"
    import redis

    try:
        client = redis.Redis.from_url(home_url, socket_connect_timeout=1)
        client.delete(broker.queue)
        for key in client.scan_iter(f"*{cache_prefix}*"):
            client.delete(key)
    except redis.RedisError:
        pass  # best effort: the database is flushed at the next session anyway


class PrivateRedis:
    """A redis-server of our own on a free port, which a test may stop and start again."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers."""
        import redis

        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        pytest.fail("the private redis-server did not start")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def private_redis(redis_url: str, tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private redis-server (needs the redis-server binary, as the machine's Redis does)."""
    import shutil

    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed and CI is set.")
        pytest.skip("redis-server is not installed.")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, message: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``message`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(message or f"condition not met within {timeout} s")
        time.sleep(interval)


def sim_source(sim: Any, **overrides) -> Any:
    """A source of the simulator's corp, with both secrets."""
    from tests.factories import make_source

    values = {"corp_id": sim.corp_id, "secret": sim.app_secret, "contact_sync_secret": sim.contact_sync_secret,
              "api_base_url": sim.base_url, "agent_id": sim.agent_id}
    values.update(overrides)
    return make_source(**values)


def finished(run_pk: int) -> Any:
    """The run if it has finished, else None."""
    from wecom_sync.models import SyncRun

    run = SyncRun.objects.get(pk=run_pk)
    return run if run.is_finished else None


def active_for(status: int) -> bool:
    """The Django account of a member with this WeCom status is active (default settings)."""
    return status in (1, 4)


def directory_diff(source: Any, sim: Any, limit: int = 20) -> list[str]:
    """Differences between the local mirror of ``source`` and the simulator's directory (empty: equal).

    Compares userids, names, statuses, Django accounts and their active flags, memberships (department,
    order, leader, main), departments (name, parent), and checks that removed members are inactive and
    have no memberships. Uses a few bulk queries, so it is fine for tens of thousands of users.
    """
    from django.contrib.auth import get_user_model

    from wecom_sync.models import ExternalDepartment, ExternalMembership, ExternalUser

    problems: list[str] = []
    user_model = get_user_model()
    departments = dict(
        ExternalDepartment.objects.filter(source=source, is_removed=False).values_list("department_id", "name")
    )
    parents = dict(
        ExternalDepartment.objects.filter(source=source, is_removed=False).values_list(
            "department_id", "parent__department_id")
    )
    remote_departments = sim.org.departments
    if set(departments) != set(remote_departments):
        problems.append(f"departments differ: missing {sorted(set(remote_departments) - set(departments))[:10]}, "
                        f"extra {sorted(set(departments) - set(remote_departments))[:10]}")
    for dept_id, remote in remote_departments.items():
        if dept_id in departments and departments[dept_id] != remote["name"]:
            problems.append(f"department {dept_id}: name {departments[dept_id]!r} != {remote['name']!r}")
        if dept_id in parents and dept_id != 1 and parents[dept_id] != remote.get("parentid"):
            problems.append(f"department {dept_id}: parent {parents[dept_id]} != {remote.get('parentid')}")
    active = {pk: flag for pk, flag in user_model.objects.values_list("pk", "is_active")}
    rows = {
        key: (pk, userid, name, status, user_id)
        for pk, key, userid, name, status, user_id in ExternalUser.objects.filter(
            source=source, is_removed=False).values_list("pk", "userid_key", "userid", "name", "status", "user_id")
    }
    remote_users = {userid.lower(): user for userid, user in sim.org.users.items()}
    if set(rows) != set(remote_users):
        problems.append(f"users differ: missing {sorted(set(remote_users) - set(rows))[:10]}, "
                        f"extra {sorted(set(rows) - set(remote_users))[:10]}")
    memberships: dict[int, set] = {}
    for user_pk, dept_id, order, leader, main in ExternalMembership.objects.filter(
            user__source=source).values_list("user_id", "department__department_id", "order", "is_leader", "is_main"):
        memberships.setdefault(user_pk, set()).add((dept_id, order, leader, main))
    for key, remote in remote_users.items():
        if key not in rows:
            continue
        pk, userid, name, status, user_id = rows[key]
        if userid != remote["userid"] or name != remote["name"] or status != int(remote["status"]):
            problems.append(f"user {key}: {(userid, name, status)} != "
                            f"{(remote['userid'], remote['name'], remote['status'])}")
        if user_id is None or active.get(user_id) != active_for(int(remote["status"])):
            problems.append(f"user {key}: account {user_id} active={active.get(user_id)}, status {remote['status']}")
        main = remote.get("main_department") or remote["department"][0]
        expected = {(d, remote["order"][i], bool(remote["is_leader_in_dept"][i]), d == main)
                    for i, d in enumerate(remote["department"])}
        if memberships.get(pk, set()) != expected:
            problems.append(f"user {key}: memberships {sorted(memberships.get(pk, set()))} != {sorted(expected)}")
        if len(problems) >= limit:
            return problems
    for pk, key, user_id in ExternalUser.objects.filter(source=source, is_removed=True).values_list(
            "pk", "userid_key", "user_id"):
        if user_id is not None and active.get(user_id):
            problems.append(f"removed user {key} still has an active account")
        if memberships.get(pk):
            problems.append(f"removed user {key} still has memberships")
    linked = list(ExternalUser.objects.filter(source=source, user__isnull=False).values_list("user_id", flat=True))
    if len(linked) != len(set(linked)):
        problems.append("two mirrors share one Django account")
    return problems[:limit]
