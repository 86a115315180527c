"""Benchmark of the full sync: the engine against a naive per-user ORM loop, and a no-op re-sync.

    python bench/full_sync.py                                  # 10k and 100k users, 2k departments, SQLite
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/wecom_sync_bench python bench/full_sync.py
    python bench/full_sync.py --users 10000 --naive-sample 2000  # smaller

Each (database, size) case runs in a fresh child process, so its peak RSS (``resource.getrusage``) is the
sync's own; the simulator runs in another process and is not counted. In each case:

1. first sync into an empty database (``services.run_full_sync``: fetch + plan + apply), with the number of
   SQL queries counted by ``connection.execute_wrapper``;
2. a no-op re-sync of the same directory (rows written to the data tables are counted: 0 expected);
3. the naive loop: the database is emptied, then the same snapshot is loaded with ``get_or_create`` for
   each department, user, Django user and membership. On large organisations it runs on the first
   ``--naive-sample`` users and its time is extrapolated linearly (the output says so).

The speed-up compares the naive loop with the engine's plan + apply time (both start from a fetched
snapshot); the engine's fetch time is printed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

DATA_TABLES = ("wecom_sync_externaluser", "wecom_sync_externaldepartment", "wecom_sync_externalmembership",
               "auth_user", "auth_group", "auth_user_groups")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the simulator process --------------------------------------------------------------------------------


def serve(users: int, departments: int, seed: int) -> None:
    """Child mode: generate an organisation, serve it, print the base URL and wait for stdin to close."""
    from wecom_sync.simulator import WeComSimulator, generate_organisation

    org = generate_organisation(users, departments, seed=seed, max_depth=10)
    with WeComSimulator(org) as sim:
        print(json.dumps({"base_url": sim.base_url, "corp_id": sim.corp_id, "secret": sim.app_secret,
                          "contact_sync_secret": sim.contact_sync_secret}), flush=True)
        sys.stdin.read()


# -- one measured case ------------------------------------------------------------------------------------


class QueryCounter:
    """execute_wrapper that counts queries and the rows written to the data tables."""

    def __init__(self) -> None:
        self.queries = 0
        self.rows_written = 0

    def __call__(self, execute, sql, params, many, context):  # noqa: ANN001, ANN204 - Django's signature
        self.queries += 1
        result = execute(sql, params, many, context)
        head = sql.lstrip()[:12].upper()
        if head.startswith(("INSERT", "UPDATE", "DELETE")) and any(t in sql for t in DATA_TABLES):
            self.rows_written += max(0, context["cursor"].rowcount or 0)
        return result


def naive_load(source, snapshot, limit: int | None) -> int:  # noqa: ANN001
    """Load the snapshot the naive way: get_or_create per department, user and membership."""
    from django.contrib.auth import get_user_model

    from wecom_sync.models import ExternalDepartment, ExternalMembership, ExternalUser

    user_model = get_user_model()
    depts = {}
    for dept in snapshot.departments.values():
        row, _created = ExternalDepartment.objects.get_or_create(
            source=source, department_id=dept.id,
            defaults={"name": dept.name, "order": dept.order, "remote_parent_id": dept.parent_id,
                      "raw": dict(dept.raw), "digest": dept.digest},
        )
        depts[dept.id] = row
    for dept in snapshot.departments.values():
        parent = depts.get(dept.parent_id)
        if parent is not None and dept.id != snapshot.root_department_id:
            row = depts[dept.id]
            row.parent = parent
            row.save()
    count = 0
    for remote in snapshot.users.values():
        if limit is not None and count >= limit:
            break
        user, _created = user_model.objects.get_or_create(
            username=remote.userid,
            defaults={"first_name": remote.name[:150], "email": remote.biz_mail or remote.email,
                      "is_active": remote.status in (1, 4)},
        )
        ext, _created = ExternalUser.objects.get_or_create(
            source=source, userid_key=remote.key,
            defaults={"userid": remote.userid, "user": user, "name": remote.name, "status": remote.status,
                      "raw": dict(remote.raw), "digest": remote.digest},
        )
        for dept_id, order, leader, main in remote.memberships():
            if dept_id in depts:
                ExternalMembership.objects.get_or_create(
                    user=ext, department=depts[dept_id],
                    defaults={"order": order, "is_leader": leader, "is_main": main},
                )
        count += 1
    return count


def run_case(users: int, departments: int, seed: int, naive_sample: int, strategy: str) -> dict:
    """Child mode: measure one case and return its figures."""
    import django
    from django.conf import settings

    db_url = os.environ.get("DATABASE_URL", "")
    tmpdir = tempfile.mkdtemp(prefix="wecom-bench-")
    if not db_url:
        settings.DATABASES["default"] = {
            "ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(tmpdir, "bench.sqlite3"),
            "TEST": {"NAME": os.path.join(tmpdir, "bench_test.sqlite3")},
        }
    settings.LOGGING = {"version": 1, "disable_existing_loggers": False}
    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from wecom_sync import services
    from wecom_sync.models import SyncSource
    from wecom_sync.sync import runner

    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    sim_proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(users), str(departments), str(seed)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    info = json.loads(sim_proc.stdout.readline())
    try:
        source = SyncSource.objects.create(
            name="Bench", slug="bench", corp_id=info["corp_id"], secret=info["secret"],
            contact_sync_secret=info["contact_sync_secret"], api_base_url=info["base_url"], fetch_strategy=strategy,
        )
        out: dict = {"users": users, "departments": departments, "vendor": connection.vendor,
                     "strategy": strategy}
        counter = QueryCounter()
        started = time.perf_counter()
        with connection.execute_wrapper(counter):
            run = services.run_full_sync(source)
        first = time.perf_counter() - started
        fetch_seconds = float(run.counters.get("fetch_seconds", 0.0))
        out["first"] = {
            "status": run.status, "seconds": round(first, 2), "fetch_seconds": round(fetch_seconds, 2),
            "apply_seconds": round(first - fetch_seconds, 2), "queries": counter.queries,
            "rows_written": counter.rows_written, "users_per_second": round(users / first),
            "created": run.counters.get("users_created", 0),
        }
        out["peak_rss_mb_first"] = round(peak_rss_mb())
        snapshot_holder = {}
        original_fetch = runner.fetch

        def keep(source, progress=None):  # noqa: ANN001, ANN202 - same signature as runner.fetch
            snapshot_holder["snapshot"] = original_fetch(source, progress)
            return snapshot_holder["snapshot"]

        runner.fetch = keep
        counter = QueryCounter()
        started = time.perf_counter()
        with connection.execute_wrapper(counter):
            run = services.run_full_sync(source)
        again = time.perf_counter() - started
        runner.fetch = original_fetch
        fetch_seconds = float(run.counters.get("fetch_seconds", 0.0))
        out["noop"] = {
            "status": run.status, "seconds": round(again, 2), "fetch_seconds": round(fetch_seconds, 2),
            "apply_seconds": round(again - fetch_seconds, 2), "queries": counter.queries,
            "rows_written": counter.rows_written, "changes": run.changes.count(),
        }
        out["peak_rss_mb"] = round(peak_rss_mb())

        # The naive loop, on an emptied database, from the same snapshot.
        snapshot = snapshot_holder["snapshot"]
        call_command("flush", interactive=False, verbosity=0)
        source = SyncSource.objects.create(name="Naive", slug="naive", corp_id=info["corp_id"],
                                           api_base_url=info["base_url"])
        limit = None if users <= naive_sample else naive_sample
        counter = QueryCounter()
        started = time.perf_counter()
        with connection.execute_wrapper(counter):
            loaded = naive_load(source, snapshot, limit)
        naive = time.perf_counter() - started
        factor = users / loaded if loaded else 1.0
        out["naive"] = {
            "users_loaded": loaded, "seconds": round(naive, 2), "queries": counter.queries,
            "extrapolated": limit is not None, "seconds_for_all": round(naive * factor, 2),
            "queries_for_all": round(counter.queries * factor),
        }
        out["speedup_vs_apply"] = round(out["naive"]["seconds_for_all"] / max(out["first"]["apply_seconds"], 1e-6), 1)
        out["speedup_vs_total"] = round(
            (out["naive"]["seconds_for_all"] + out["first"]["fetch_seconds"]) / out["first"]["seconds"], 1
        )
        out["query_budget"] = 50 + users // 100
        out["noop_ratio"] = round(out["noop"]["seconds"] / out["first"]["seconds"], 3)
    finally:
        sim_proc.stdin.close()
        sim_proc.wait(30)
        connection.creation.destroy_test_db(connection.settings_dict["NAME"], verbosity=0)
    return out


def report(case: dict) -> None:
    """Print one case in a readable form."""
    f, n, nv = case["first"], case["noop"], case["naive"]
    print(f"\n== {case['users']:,} users / {case['departments']:,} departments on {case['vendor']} "
          f"(fetch strategy {case['strategy']}) ==")
    print(f"first sync   : {f['seconds']:8.2f} s  ({f['fetch_seconds']:.2f} s fetch + {f['apply_seconds']:.2f} s "
          f"plan/apply), {f['users_per_second']:,} users/s, {f['queries']:,} SQL queries "
          f"(budget 50 + users/100 = {case['query_budget']:,}), status {f['status']}")
    print(f"no-op resync : {n['seconds']:8.2f} s  ({n['fetch_seconds']:.2f} s fetch + {n['apply_seconds']:.2f} s "
          f"plan/apply), {n['queries']:,} SQL queries, {n['rows_written']} rows written, {n['changes']} changes, "
          f"{case['noop_ratio'] * 100:.0f}% of the first sync")
    naive_note = (f"measured on {nv['users_loaded']:,} users, extrapolated linearly to {case['users']:,}"
                  if nv["extrapolated"] else "all users")
    print(f"naive loop   : {nv['seconds_for_all']:8.2f} s  ({naive_note}; {nv['seconds']:.2f} s measured), "
          f"{nv['queries_for_all']:,} SQL queries")
    print(f"speed-up     : {case['speedup_vs_apply']}x (naive vs plan/apply), "
          f"{case['speedup_vs_total']}x (naive + the same fetch vs whole sync)")
    print(f"peak RSS     : {case['peak_rss_mb']} MB (after first sync: {case['peak_rss_mb_first']} MB)")


def main() -> None:
    """Parse arguments and run each case in its own process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--departments", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--naive-sample", type=int, default=10_000,
                        help="largest number of users the naive loop loads (then extrapolated)")
    parser.add_argument("--strategy", choices=["app", "contact_sync"], default="app")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--serve", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--case", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    if args.case:
        users, departments, seed, sample = (int(x) for x in args.case)
        print(json.dumps(run_case(users, departments, seed, sample, os.environ["BENCH_STRATEGY"])), flush=True)
        return
    results = []
    for users in args.users:
        env = dict(os.environ, BENCH_STRATEGY=args.strategy)
        proc = subprocess.run(
            [sys.executable, __file__, "--case", str(users), str(args.departments), str(args.seed),
             str(args.naive_sample)],
            env=env, capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"case {users} failed")
        case = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(case)
        report(case)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
