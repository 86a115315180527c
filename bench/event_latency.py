"""Event-to-applied latency through the real stack: gunicorn → PostgreSQL inbox → Redis broker → Celery worker.

    python bench/event_latency.py                              # 300 paced events + a burst of 300
    python bench/event_latency.py --paced 100 --burst 500 --json /tmp/latency.json

A simulator directory (default 3,000 users) is synced into a fresh PostgreSQL database
(``wecom_sync_event_latency`` unless --database-url says otherwise), then the simulator changes members and
delivers each change_contact event, encrypted and signed, to the callback URL served by gunicorn
(``example_project.wsgi``, DEBUG off). A ``celery -A example_project worker`` (prefork) consumes the Redis
queue, re-fetches each member from the simulator and applies it. The latency of one event is the time
from just before the simulator POSTs it to the ``processed_at`` the worker writes (one clock: one machine).

Two phases: *paced* events (one every --interval seconds, so the queue is empty: the pipeline's own
latency) and a *burst* (all events posted at once by 8 client threads: latency under load). Each event is
about a different member, so no event is coalesced into another.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = """\
from example_project.settings import *  # noqa: F403
from example_project.settings import database_from_url
DEBUG = False
ALLOWED_HOSTS = ["*"]
DATABASES = {{"default": database_from_url({db!r})}}
CELERY_BROKER_URL = {broker!r}
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_DEFAULT_QUEUE = {queue!r}
CACHES = {{"default": {{"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": {broker!r},
                       "KEY_PREFIX": {queue!r}}}}}
WECOM_SYNC = {{**WECOM_SYNC, "ENCRYPTION_KEYS": ["bench-event-latency-key"]}}
LOGGING = {{"version": 1, "disable_existing_loggers": False}}
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def recreate_database(url: str) -> None:
    """Drop and create the PostgreSQL database named in url."""
    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin_url = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def wait_http(url: str, seconds: float = 30) -> None:
    """Wait until url answers (any status)."""
    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def summary(latencies: list[float]) -> dict[str, float]:
    """p50 / p95 / max in milliseconds."""
    ms = [x * 1000 for x in latencies]
    return {"events": len(ms), "p50_ms": round(percentile(ms, 50), 1), "p95_ms": round(percentile(ms, 95), 1),
            "max_ms": round(max(ms), 1)}


def worker_full_sync(users: int) -> dict[str, object]:
    """Time tasks.full_sync of a new ``users``-member directory in the worker, then a no-op re-sync."""
    from wecom_sync import services
    from wecom_sync.models import SyncRun, SyncSource
    from wecom_sync.simulator import WeComSimulator, generate_organisation

    figures: dict[str, object] = {"users": users}
    org = generate_organisation(users=users, departments=max(10, users // 50), seed=7, max_depth=10)
    with WeComSimulator(org) as sim:
        source = SyncSource.objects.create(
            name="Worker sync", slug="worker-sync", corp_id=sim.corp_id, agent_id=sim.agent_id,
            secret=sim.app_secret, contact_sync_secret=sim.contact_sync_secret, api_base_url=sim.base_url,
        )
        for label in ("first", "no-op resync"):
            run = services.enqueue_full_sync(source, trigger="api")
            while not run.is_finished:
                time.sleep(0.5)
                run = SyncRun.objects.get(pk=run.pk)
            figures[label] = {
                "status": run.status,
                "queued_to_finished_s": round((run.finished_at - run.created_at).total_seconds(), 2),
                "fetch_s": run.counters.get("fetch_seconds"),
                "users_created": run.counters.get("users_created", 0),
                "users_unchanged": run.counters.get("users_unchanged", 0),
                "api_calls": run.counters.get("api_calls"),
            }
    return figures


def main() -> None:  # noqa: PLR0915 - one linear script
    """Run the benchmark and print (and optionally save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/wecom_sync_event_latency")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--paced", type=int, default=300, help="events sent one at a time")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between two paced events")
    parser.add_argument("--burst", type=int, default=300, help="events sent at once")
    parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--full-sync-users", type=int, default=0,
                        help="also time a full sync of this many users (2%% as many departments) run by the worker")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.paced + args.burst > args.users:
        parser.error("--paced + --burst must not exceed --users (one member per event)")

    recreate_database(args.database_url)
    queue = f"event-latency-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="wecom-event-latency-"))
    (workdir / "latency_settings.py").write_text(
        SETTINGS.format(db=args.database_url, broker=args.broker, queue=queue), encoding="utf-8")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "latency_settings", "PYTHONPATH": f"{workdir}:{ROOT}"}
    env.pop("CELERY_BROKER_URL", None)
    sys.path.insert(0, str(workdir))
    os.environ["DJANGO_SETTINGS_MODULE"] = "latency_settings"

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from wecom_sync import services
    from wecom_sync.models import CallbackEvent, SyncSource
    from wecom_sync.simulator import WeComSimulator, generate_organisation

    port = free_port()
    processes: list[subprocess.Popen] = []
    logs = open(workdir / "services.log", "wb")  # noqa: SIM115 - closed at the end
    try:
        with WeComSimulator(generate_organisation(users=args.users, departments=60, seed=42)) as sim:
            source = SyncSource.objects.create(
                name="Latency", slug="latency", corp_id=sim.corp_id, agent_id=sim.agent_id, secret=sim.app_secret,
                contact_sync_secret=sim.contact_sync_secret, token="LatencyToken123", api_base_url=sim.base_url,
                encoding_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            )
            run = services.run_full_sync(source)
            print(f"initial sync: {run.status}, {run.counters.get('users_created')} users", flush=True)

            gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or "gunicorn"
            processes.append(subprocess.Popen(
                [gunicorn, "example_project.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers",
                 str(args.gunicorn_workers)], cwd=ROOT, env=env, stdout=logs, stderr=logs))
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "example_project", "worker", "--pool", "prefork",
                 "--concurrency", str(args.concurrency), "-Q", queue, "--without-mingle", "--without-gossip",
                 "-l", "warning"], cwd=ROOT, env=env, stdout=logs, stderr=logs))
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/")
            sim.set_callback(base + source.get_callback_path(), "LatencyToken123",
                             "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
            from example_project.celery import app

            deadline = time.monotonic() + 60
            while not app.control.ping(timeout=0.5) and time.monotonic() < deadline:
                pass

            userids = sorted(sim.org.users)
            sent: dict[str, float] = {}  # userid -> wall-clock time just before the POST

            import requests

            session = requests.Session()
            session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=16))
            url = base + source.get_callback_path()

            def change(userid: str, label: str) -> None:
                body, params = sim.build_callback(sim.update_user(userid, name=f"{label} {userid}", deliver=False))
                sent[userid] = time.time()
                response = session.post(url, params=params, data=body.encode(), timeout=30,
                                        headers={"Content-Type": "text/xml"})
                if response.status_code != 200:
                    raise RuntimeError(f"callback answered {response.status_code}")

            def latencies(batch: list[str], timeout: float = 300) -> list[tuple[float, float]]:
                """(sent, applied) wall-clock times of each event of the batch, once all are applied."""
                keys = [u.lower() for u in batch]
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    rows = list(CallbackEvent.objects.filter(source=source, object_id__in=keys, status="applied")
                                .values_list("object_id", "processed_at"))
                    if len(rows) == len(batch):
                        by_key = {u.lower(): u for u in batch}
                        return [(sent[by_key[key]], processed.timestamp()) for key, processed in rows]
                    time.sleep(0.2)
                raise RuntimeError("events were not all applied in time")

            results: dict[str, object] = {"users": args.users, "worker_processes": args.concurrency,
                                          "gunicorn_workers": args.gunicorn_workers}
            paced = userids[: args.paced]
            for userid in paced:
                change(userid, "paced")
                time.sleep(args.interval)
            results["paced"] = summary([applied - at for at, applied in latencies(paced)])
            print("paced:", results["paced"], flush=True)

            burst = userids[args.paced: args.paced + args.burst]
            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda u: change(u, "burst"), burst))
            posted = time.monotonic() - started
            times = latencies(burst)
            span = max(applied for _, applied in times) - min(at for at, _ in times)
            results["burst"] = {**summary([applied - at for at, applied in times]),
                                "posting_seconds": round(posted, 2), "applied_per_second": round(len(times) / span, 1)}
            print("burst:", results["burst"], flush=True)
            failed = CallbackEvent.objects.filter(source=source).exclude(status="applied").count()
            results["not_applied"] = failed
        if args.full_sync_users:
            results["worker_full_sync"] = worker_full_sync(args.full_sync_users)
            print("full sync through the worker:", results["worker_full_sync"], flush=True)
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        logs.close()
        import redis

        redis.Redis.from_url(args.broker).delete(queue)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
