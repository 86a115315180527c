"""Benchmark of the callback endpoint under concurrent clients, and of the callback crypto beside wechatpy.

    python bench/callback.py                                   # SQLite file, Redis broker, 4 gunicorn workers
    python bench/callback.py --database-url postgres://postgres@127.0.0.1:5432/wecom_sync_bench
    python bench/callback.py --requests 4000 --clients 32 --workers 4 --write-docs

The endpoint runs in gunicorn serving ``example_project.wsgi`` (DEBUG off) on a prepared database; the
events are distinct change_contact events, encrypted and signed beforehand so the clients only send.
Each request goes the whole production path: source lookup (secrets decrypted), signature, AES, XML,
INSERT into the inbox, and publishing ``process_callback_event`` to the Celery broker (Redis by default;
no worker consumes during the run, the queue key is deleted afterwards). A second pass re-sends a sample
of the same events to measure the duplicate path. The crypto figures are single-threaded, in this
process, for our WeComCrypto and wechatpy's WeChatCrypto on the same ~0.5 KB event.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOKEN = "BenchToken0123456789abcdefghijkl"
AES_KEY = "BenchKey0123456789abcdefghijklmnopqrstuvwxy"
CORP_ID = "wwbenchcorp00001"
ENCRYPTION_KEY = "bench-encryption-key-not-secret"
SLUG = "bench"
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Callback endpoint"
LOAD_BEFORE = os.getloadavg()


def event_xml(i: int, create_time: int) -> str:
    """A realistic (pre-2022-08-15, full payload) update_user event, about 0.5 KB."""
    return (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
        f"<CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        "<Event><![CDATA[change_contact]]></Event><ChangeType><![CDATA[update_user]]></ChangeType>"
        f"<UserID><![CDATA[bench.user.{i:06d}]]></UserID><Name><![CDATA[压测用户{i}]]></Name>"
        "<Department><![CDATA[1,2,3]]></Department><MainDepartment>1</MainDepartment>"
        "<IsLeaderInDept><![CDATA[0,1,0]]></IsLeaderInDept><Position><![CDATA[Engineer]]></Position>"
        f"<Mobile>138{i:08d}</Mobile><Gender>1</Gender><Email><![CDATA[user{i}@example.com]]></Email>"
        "<Status>1</Status><Alias><![CDATA[alias]]></Alias><Telephone><![CDATA[010-12345678]]></Telephone>"
        "</xml>"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


# -- crypto ---------------------------------------------------------------------------------------------


def ops_per_second(fn, seconds: float = 1.5) -> float:  # noqa: ANN001
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(50):
            fn()
        count += 50
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


def bench_crypto() -> dict[str, dict[str, float]]:
    """Encrypt+sign and verify+decrypt rates of WeComCrypto and wechatpy on the same event."""
    from wechatpy.enterprise.crypto import WeChatCrypto

    from wecom_sync.crypto import WeComCrypto

    message = event_xml(1, 1700000000)
    ours = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
    theirs = WeChatCrypto(TOKEN, AES_KEY, CORP_ID)
    parts = ours.encrypt_message(message, "12345", "1700000000")
    encrypted, sig = parts["Encrypt"], parts["MsgSignature"]
    assert ours.decrypt_message(sig, "1700000000", "12345", encrypted) == message
    assert theirs.decrypt_message({"Encrypt": encrypted}, sig, "1700000000", "12345") == message
    return {
        "encrypt+sign": {
            "wecom_sync": ops_per_second(lambda: ours.encrypt_message(message, "12345", "1700000000")),
            "wechatpy": ops_per_second(lambda: theirs.encrypt_message(message, "12345", "1700000000")),
        },
        "verify+decrypt": {
            "wecom_sync": ops_per_second(lambda: ours.decrypt_message(sig, "1700000000", "12345", encrypted)),
            "wechatpy": ops_per_second(
                lambda: theirs.decrypt_message({"Encrypt": encrypted}, sig, "1700000000", "12345")
            ),
        },
    }


# -- the endpoint ---------------------------------------------------------------------------------------


def prepare_database(env: dict[str, str]) -> None:
    """Migrate the database and create the benchmark source, in a child process with the server's env."""
    script = (
        "import django; django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('migrate', verbosity=0)\n"
        "from django.db import connection\n"
        "if connection.vendor == 'sqlite':\n"
        "    connection.cursor().execute('PRAGMA journal_mode=WAL')\n"
        "from wecom_sync.models import CallbackEvent, SyncSource\n"
        f"SyncSource.objects.filter(slug={SLUG!r}).delete()\n"
        f"SyncSource.objects.create(name='Bench', slug={SLUG!r}, corp_id={CORP_ID!r}, token={TOKEN!r},"
        f" encoding_aes_key={AES_KEY!r}, secret='unused', api_base_url='http://127.0.0.1:1')\n"
    )
    subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, check=True)


def count_events(env: dict[str, str]) -> int:
    script = (
        "import django; django.setup()\n"
        "from wecom_sync.models import CallbackEvent\n"
        f"print(CallbackEvent.objects.filter(source__slug={SLUG!r}).count())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def start_gunicorn(env: dict[str, str], port: int, workers: int, threads: int) -> subprocess.Popen:
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or "gunicorn"
    proc = subprocess.Popen(
        [gunicorn, "example_project.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
         "--threads", str(threads), "--log-level", "warning", "--backlog", "2048"],
        env=env, cwd=ROOT,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("gunicorn did not start")


def run_clients(url: str, requests_: list[tuple[bytes, dict[str, str]]], clients: int) -> tuple[list[float], dict]:
    """Send every request once from `clients` threads; return latencies (s) and status counts.

    The clients use http.client (lighter than requests), so more of the machine is left to the server.
    """
    parsed = urlsplit(url)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    cursor = iter(range(len(requests_)))

    def worker() -> None:
        conn: http.client.HTTPConnection | None = None
        mine: list[float] = []
        mine_status: dict[int, int] = {}
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                break
            body, params = requests_[i]
            path = f"{parsed.path}?{urlencode(params)}"
            started = time.perf_counter()
            for attempt in range(2):
                if conn is None:
                    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
                try:
                    conn.request("POST", path, body=body, headers={"Content-Type": "text/xml"})
                    response = conn.getresponse()
                    response.read()
                    break
                except (http.client.HTTPException, OSError):
                    conn.close()
                    conn = None
                    if attempt:
                        raise
            mine.append(time.perf_counter() - started)
            mine_status[response.status] = mine_status.get(response.status, 0) + 1
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        with lock:
            latencies.extend(mine)
            for k, v in mine_status.items():
                statuses[k] = statuses.get(k, 0) + v

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, statuses


def bench_endpoint(args: argparse.Namespace) -> dict:
    from wecom_sync.crypto import WeComCrypto

    workdir = Path(tempfile.mkdtemp(prefix="wecom-bench-"))
    database_url = args.database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
    # The example project's settings, with persistent database connections as a production deployment has.
    (workdir / "bench_settings.py").write_text(
        "from example_project.settings import *  # noqa: F403\n"
        f"DATABASES['default']['CONN_MAX_AGE'] = {int(args.conn_max_age)}\n",
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench_settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": database_url,
        "WECOM_SYNC_ENCRYPTION_KEYS": ENCRYPTION_KEY,
        "CELERY_BROKER_URL": args.broker,
        "WECOM_SYNC_LOG_LEVEL": "ERROR",
        "PYTHONPATH": os.pathsep.join([str(workdir), str(ROOT)]),
    }
    prepare_database(env)
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
    base_time = int(time.time())
    prepared = []
    for i in range(args.requests):
        body, params = crypto.envelope_xml(event_xml(i, base_time + i), str(secrets.randbelow(10**9)), base_time)
        prepared.append((body.encode("utf-8"), params))

    port = free_port()
    server = start_gunicorn(env, port, args.workers, args.threads)
    url = f"http://127.0.0.1:{port}/wecom/callback/{SLUG}/"
    try:
        run_clients(url, prepared[: min(200, len(prepared))], args.clients)  # warm-up (also stores 200 events)
        started = time.perf_counter()
        latencies, statuses = run_clients(url, prepared[200:], args.clients)
        elapsed = time.perf_counter() - started
        dup_sample = prepared[200 : 200 + min(1000, len(prepared) - 200)]
        dup_started = time.perf_counter()
        dup_latencies, dup_statuses = run_clients(url, dup_sample, args.clients)
        dup_elapsed = time.perf_counter() - dup_started
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    stored = count_events(env)
    if args.broker.startswith("redis://"):
        import redis

        redis.Redis.from_url(args.broker).delete("celery")
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "database": "PostgreSQL" if database_url.startswith("postgres") else "SQLite (file, WAL)",
        "broker": args.broker,
        "workers": args.workers,
        "conn_max_age": args.conn_max_age,
        "threads": args.threads,
        "clients": args.clients,
        "requests": len(latencies),
        "statuses": statuses,
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "duplicates": {"requests": len(dup_latencies), "statuses": dup_statuses,
                       "rps": len(dup_latencies) / dup_elapsed,
                       "p50_ms": percentile(dup_latencies, 50) * 1000, "p99_ms": percentile(dup_latencies, 99) * 1000},
        "stored_events": stored,
    }


# -- report ---------------------------------------------------------------------------------------------


def markdown(endpoints: list[dict], crypto: dict, command: str) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; clients, server, database and Redis on the same machine (load average "
        f"{LOAD_BEFORE[0]:.1f} when the run started: other jobs shared it, so treat the figures as a floor). "
        "The server uses the example project's settings with DEBUG off and CONN_MAX_AGE="
        f"{endpoints[0]['conn_max_age']}. Command:",
        "",
        "```",
        command,
        "```",
        "",
        "Each request is a distinct, signed, encrypted `update_user` event (about 0.5 KB of XML) taking the full "
        "production path: source lookup with secrets decrypted, signature check, AES-256-CBC decryption, "
        "defusedxml parsing, INSERT into the inbox, and publishing `process_callback_event` to the broker. "
        "Redeliveries hit the dedupe constraint and publish nothing.",
        "",
        "| database | gunicorn | clients | requests | req/s | p50 ms | p99 ms | max ms | redeliveries req/s "
        "| redeliveries p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in endpoints:
        ok = e["statuses"].get(200, 0) == e["requests"] and e["duplicates"]["statuses"].get(200, 0) == e[
            "duplicates"]["requests"]
        lines.append(
            f"| {e['database']} | {e['workers']} workers × {e['threads']} threads | {e['clients']} | {e['requests']:,}"
            f"{'' if ok else ' (non-200 seen)'} | {e['rps']:,.0f} | {e['p50_ms']:.1f} | {e['p99_ms']:.1f} | "
            f"{e['max_ms']:.0f} | {e['duplicates']['rps']:,.0f} | {e['duplicates']['p99_ms']:.1f} |"
        )
    lines += [
        "",
        "Crypto, one thread, same event, operations per second:",
        "",
        "| operation | wecom_sync.crypto | wechatpy 1.8.18 | ratio |",
        "|---|---|---|---|",
    ]
    for op, figures in crypto.items():
        lines.append(
            f"| {op} | {figures['wecom_sync']:,.0f} | {figures['wechatpy']:,.0f} | "
            f"{figures['wecom_sync'] / figures['wechatpy']:.2f}× |"
        )
    lines += [
        "",
        "Reading: WeCom waits 5 seconds for an answer; the p99 above is the margin. The endpoint is bound by "
        "the database INSERT and the broker publish, not by the crypto (tens of microseconds per request).",
        "",
    ]
    return "\n".join(lines)


def write_docs(section: str) -> None:
    """Replace (or append) the "Callback endpoint" section of docs/benchmarks.md, leaving other sections alone."""
    text = DOCS.read_text(encoding="utf-8") if DOCS.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOCS.write_text(text, encoding="utf-8")


def main() -> None:
    """Run the benchmark, print its figures, and optionally write them to docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="distinct events to send (the first 200 warm up)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker")
    parser.add_argument("--database-url", action="append", default=[],
                        help="postgres://... (repeatable); default: a fresh SQLite file")
    parser.add_argument("--sqlite-too", action="store_true", help="with --database-url, also run on SQLite")
    parser.add_argument("--broker", default=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/14"))
    parser.add_argument("--conn-max-age", type=int, default=60, help="CONN_MAX_AGE of the server's database")
    parser.add_argument("--write-docs", action="store_true", help="update the section in docs/benchmarks.md")
    args = parser.parse_args()
    if args.requests <= 200:
        parser.error("--requests must be more than 200 (the first 200 warm up)")

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    urls = list(args.database_url)
    if not urls or args.sqlite_too:
        urls.insert(0, "")
    endpoints = []
    for url in urls:
        run_args = argparse.Namespace(**{**vars(args), "database_url": url})
        result = bench_endpoint(run_args)
        endpoints.append(result)
        print(json.dumps(result, indent=2))
    crypto = bench_crypto()
    print(json.dumps(crypto, indent=2))
    command = "python " + " ".join(["bench/callback.py", *sys.argv[1:]])
    section = markdown(endpoints, crypto, command)
    print(section)
    if args.write_docs:
        write_docs(section)


if __name__ == "__main__":
    main()
