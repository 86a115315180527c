"""A new user's first hour, from the built packages: the wheel alone in a fresh virtualenv, a fresh
``startproject`` site wired by the README's install blocks as written, a full sync against the standalone
simulator, and one callback sent through the simulator's control API. The sdist carries runnable tests.

Slow (a virtualenv and an install from the package index): marked ``packaging``; CI runs it once.
``WECOM_PACKAGING_WHEEL=path.whl`` reuses a wheel built beforehand (CI builds it in its own step).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.packaging, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Install into an existing site"


def install_blocks(readme: str) -> list[tuple[str, str]]:
    """Return the (language, text) of each fenced block in the README's install section, in order."""
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    section = readme[start:end if end != -1 else None]
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)```", section, re.S)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def run(cmd: list[str] | str, **kwargs) -> subprocess.CompletedProcess:  # noqa: ANN003
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def build(kind: str, out: Path) -> Path:
    """Build the wheel or the sdist of this checkout into ``out`` and return its path."""
    if kind == "wheel" and os.environ.get("WECOM_PACKAGING_WHEEL"):
        return Path(os.environ["WECOM_PACKAGING_WHEEL"]).resolve()
    if kind == "wheel":
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)])
        return next(out.glob("django_wecom_sync-*.whl"))
    script = ("import sys; from setuptools import build_meta as b; "
              "print(b.build_sdist(sys.argv[1]))")
    venv = out / "build-venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "pip"), "install", "-q", "setuptools>=77"])
    name = run([str(venv / "bin" / "python"), "-c", script, str(out)], cwd=ROOT).stdout.split()[-1]
    return out / name


def test_readme_install_blocks_wire_a_fresh_site_from_the_wheel(tmp_path):
    wheel = build("wheel", tmp_path)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    bin_dir = venv / "bin"
    run([str(bin_dir / "pip"), "install", "-q", str(wheel)])
    # celery[redis] comes with the package: a worker pointed at Redis can load its transport.
    run([str(bin_dir / "python"), "-c", "import kombu.transport.redis, redis; print('redis transport ok')"])

    site = tmp_path / "site"
    site.mkdir()
    run([str(bin_dir / "django-admin"), "startproject", "mysite", str(site)])

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "CELERY_", "WECOM_", "DATABASE_URL", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    script = ["set -euo pipefail"]
    blocks = install_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert [lang for lang, _ in blocks].count("python") >= 4, blocks
    for lang, text in blocks:
        if lang == "python":
            target = re.match(r"# (\S+)", text)
            assert target, f"a python install block must name its file on its first line: {text[:80]!r}"
            path = site / target.group(1)
            with path.open("a", encoding="utf-8") as fh:
                fh.write("\n" + text)
        elif lang == "bash":
            # The package itself is already installed from the wheel under test.
            script += [line for line in text.splitlines() if not line.startswith("pip install")]
    # docs/simulator.md: a site tested against the simulator lets its API base URL point at loopback.
    with (site / "mysite" / "settings.py").open("a", encoding="utf-8") as fh:
        fh.write('\nWECOM_SYNC["API_HOSTS"] = ["qyapi.weixin.qq.com", "127.0.0.1", "localhost"]\n')
    script.append('printf %s "$WECOM_SYNC_KEY" > .wecom_key')
    result = run(["bash", "-c", "\n".join(script)], cwd=site, env=env)
    assert "wecom_sync.W" not in result.stdout + result.stderr, result.stdout + result.stderr
    env["WECOM_SYNC_KEY"] = (site / ".wecom_key").read_text()
    assert len(env["WECOM_SYNC_KEY"]) >= 40
    python = str(bin_dir / "python")

    sim_port = free_port()
    sim = subprocess.Popen([python, "-m", "wecom_sync.simulator", "--port", str(sim_port), "--users", "40",
                            "--departments", "6", "--seed", "7"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    web = None
    try:
        sim_url = f"http://127.0.0.1:{sim_port}"
        wait_for(sim_url + "/control/info")
        info = requests.get(sim_url + "/control/info", timeout=5).json()
        assert info["errcode"] == 0 and info["users"] == 40

        make_source = (
            "import json, sys; from wecom_sync.models import SyncSource; i = json.loads(sys.argv[1]); "
            "SyncSource.objects.create(name='Acme', slug='acme', corp_id=i['corp_id'], agent_id=i['agent_id'], "
            "secret=i['app_secret'], token=i['token'], encoding_aes_key=i['encoding_aes_key'], "
            "api_base_url=i['api_base_url'])"
        )
        run([python, "-c", "import django, os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', "
             "'mysite.settings'); sys.path.insert(0, '.'); django.setup(); " + make_source, json.dumps(info)],
            cwd=site, env=env)
        synced = run([python, "manage.py", "wecom_sync", "acme"], cwd=site, env=env)
        assert re.search(r"users created\s+40\b", synced.stdout), synced.stdout[-3000:]

        web_port = free_port()
        web = subprocess.Popen([python, "manage.py", "runserver", f"127.0.0.1:{web_port}", "--noreload"],
                               cwd=site, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"http://127.0.0.1:{web_port}/admin/login/")
        target = requests.post(sim_url + "/control/callback", timeout=10,
                               json={"url": f"http://127.0.0.1:{web_port}/wecom/callback/acme/"}).json()
        assert target["errcode"] == 0, target
        added = requests.post(sim_url + "/control/users", timeout=30, json={
            "userid": "readme.newcomer", "name": "README Newcomer", "department": [1],
            "email": "newcomer@example.com"}).json()
        assert added["errcode"] == 0 and added["delivery_status"] == 200, added

        check = ("from wecom_sync.models import CallbackEvent, ExternalUser; "
                 "e = CallbackEvent.objects.get(); u = ExternalUser.objects.get(userid='readme.newcomer'); "
                 "print(e.change_type, e.status, u.user.email)")
        shown = run([python, "manage.py", "shell", "-c", check], cwd=site, env=env).stdout
        assert shown.strip().splitlines()[-1].split() == ["create_user", "applied", "newcomer@example.com"], shown
    finally:
        for proc in (web, sim):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)


def test_sdist_carries_license_and_runnable_tests(tmp_path):
    sdist = build("sdist", tmp_path)
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "unpacked", filter="data")
    for needed in ("LICENSE", "tests/conftest.py", "tests/settings.py", "tests/factories.py", "manage.py",
                   "example_project/settings.py", "wecom_sync/locale/zh_Hans/LC_MESSAGES/django.mo"):
        assert needed in names, f"{needed} is missing from the sdist"
    unpacked = next((tmp_path / "unpacked").iterdir())
    env = {**os.environ, "WECOM_TEST_DB": "sqlite"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_conf.py",
         "tests/test_secretbox.py"], cwd=unpacked, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout)
    # The metadata names the SPDX license.
    pkg_info = (unpacked / "PKG-INFO").read_text(encoding="utf-8")
    assert "License-Expression: MIT" in pkg_info
