"""Benchmark of the WeCom simulator and the client's full fetch on a large organisation.

    python bench/simulator.py                        # 100,000 users, 2,000 departments
    python bench/simulator.py --users 20000 --departments 500

Prints the generation time, then for each fetch strategy the wall time, the API calls (as counted by the
client and by the simulator) and the size of the snapshot. Uses the test settings (locmem cache, no DB).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("WECOM_TEST_DB", "sqlite")


def main() -> None:
    """Run the benchmark and print its figures."""
    import django

    django.setup()
    from wecom_sync.conf import app_settings
    from wecom_sync.simulator import WeComSimulator, generate_organisation
    from wecom_sync.sync.fetch import fetch_snapshot

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--departments", type=int, default=2_000)
    parser.add_argument("--max-depth", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", choices=["app", "contact_sync", "both"], default="both")
    parser.add_argument("--user-get-sample", type=int, default=5000,
                        help="also time this many user/get calls (FETCH_CONCURRENCY threads) and extrapolate "
                             "to one call per user; 0 to skip")
    args = parser.parse_args()

    started = time.perf_counter()
    org = generate_organisation(args.users, args.departments, seed=args.seed, max_depth=args.max_depth)
    generated = time.perf_counter() - started
    started = time.perf_counter()
    rows = len(org.index.list_id_rows)
    indexed = time.perf_counter() - started
    print(f"organisation: {len(org.users):,} users, {len(org.departments):,} departments, "
          f"{rows:,} memberships, depth {max(org.depth(d) for d in org.departments)}")
    print(f"generation: {generated:.2f} s (+ {indexed:.2f} s to index)")
    print(f"fetch concurrency: {app_settings.FETCH_CONCURRENCY}")

    strategies = ["app", "contact_sync"] if args.strategy == "both" else [args.strategy]
    with WeComSimulator(org) as sim:
        for strategy in strategies:
            source = SimpleNamespace(
                corp_id=sim.corp_id,
                secret=sim.app_secret,
                contact_sync_secret=sim.contact_sync_secret,
                api_base_url=sim.base_url,
                root_department_id=1,
                effective_fetch_strategy=strategy,
            )
            sim.reset_calls()
            started = time.perf_counter()
            snapshot = fetch_snapshot(source)
            elapsed = time.perf_counter() - started
            calls = ", ".join(f"{path.removeprefix('/cgi-bin/')} {n}" for path, n in sorted(sim.calls.items()))
            print(f"fetch [{strategy}]: {elapsed:.2f} s, {snapshot.api_calls:,} API calls ({calls}); "
                  f"{len(snapshot.users):,} users, {len(snapshot.departments):,} departments, "
                  f"complete={snapshot.complete}")
        if args.user_get_sample:
            from concurrent.futures import ThreadPoolExecutor

            from wecom_sync.client import WeComClient

            client = WeComClient(sim.corp_id, sim.app_secret, base_url=sim.base_url)
            sample = list(org.users)[: args.user_get_sample]
            client.get_access_token()
            started = time.perf_counter()
            with ThreadPoolExecutor(app_settings.FETCH_CONCURRENCY) as pool:
                list(pool.map(client.get_user, sample))
            elapsed = time.perf_counter() - started
            per_call = elapsed / len(sample)
            print(f"user/get: {len(sample):,} calls in {elapsed:.2f} s ({per_call * 1000:.2f} ms each); one per "
                  f"user would take ~{per_call * len(org.users):.0f} s here, and at WeCom's 10,000 calls/min "
                  f"per API at least {len(org.users) / 10_000:.0f} min")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: {peak:.0f} MB")


if __name__ == "__main__":
    main()
