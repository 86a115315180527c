"""The newcomer's path: the demo command on a fresh SQLite file, as the README runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_end_to_end_on_a_fresh_sqlite_file(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "CELERY_BROKER_URL",
                                                              "REDIS_URL")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    result = subprocess.run(
        [sys.executable, "manage.py", "wecom_demo", "--users", "300", "--departments", "25"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"users created\s+300\b", out), out[-2000:]
    assert "local mirror: 25 departments, 300 members" in out
    assert out.count("✔") == 8 and "✘" not in out
    assert "signed in with WeCom (web login) and reached the admin" in out
    assert "recorded by the simulator" in out  # the demo's app message
    assert "6 callbacks received" in out
    assert (tmp_path / "demo.sqlite3").exists()
