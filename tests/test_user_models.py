"""The user-model matrix: each supported kind of AUTH_USER_MODEL through a first sync, a sync after changes
(rename, move, leave, rehire) and a no-op, on the database the suite runs on (SQLite or PostgreSQL).

AUTH_USER_MODEL cannot change inside one process, so each variant runs ``tests/usermodels/scenario.py`` in a
pytest subprocess with ``tests.usermodels.settings`` (which installs the variant's app and, on PostgreSQL,
uses a test database of its own).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import django
import pytest

# Minutes of work: CI runs it on PostgreSQL and on SQLite with Django 5.2, not on every other Django leg.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = ["default", "email_login", "uuid_pk", "required_fields", "db_default", "generated"]
NEEDS_DJANGO_5 = {"db_default": "db_default", "generated": "GeneratedField"}


def _available(variant: str) -> str | None:
    """Why the variant cannot run here, or None."""
    if variant in NEEDS_DJANGO_5 and django.VERSION < (5, 0):
        return f"{NEEDS_DJANGO_5[variant]} exists from Django 5.0; this is Django {django.get_version()}."
    return None


def _start(variant: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "USERMODEL_VARIANT": variant,
        "DJANGO_SETTINGS_MODULE": "tests.usermodels.settings",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    return subprocess.Popen(  # noqa: S603 - our own interpreter and a fixed argument list
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "tests/usermodels/scenario.py"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.fixture(scope="module")
def variant_runs():
    """Start every runnable variant at once (they wait on I/O more than on the CPU); stop them at the end."""
    runs = {v: _start(v) for v in VARIANTS if _available(v) is None}
    yield runs
    for proc in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("variant", VARIANTS)
def test_user_model_variant(variant: str, variant_runs) -> None:  # noqa: ANN001
    reason = _available(variant)
    if reason:
        pytest.skip(reason)
    proc = variant_runs[variant]
    output, _ = proc.communicate(timeout=300)
    tail = output[-6000:]
    assert proc.returncode == 0, f"variant {variant} failed:\n{tail}"
    assert "1 passed" in output, tail
