"""The standalone simulator: ``python -m wecom_sync.simulator`` prints what a sync source needs, and its
control API (HTTP and CLI) changes the directory and delivers the matching callbacks to a real site."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import requests

from wecom_sync.models import ExternalDepartment, ExternalUser, SyncRun, SyncSource
from wecom_sync.services import run_full_sync
from wecom_sync.simulator import generate_organisation
from wecom_sync.simulator.control import StandaloneSimulator, credentials_from_seed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def standalone():
    creds = credentials_from_seed(5)
    sim = StandaloneSimulator(generate_organisation(users=10, departments=4, seed=5), corp_id=creds["corp_id"],
                              app_secret=creds["app_secret"], contact_sync_secret=creds["contact_sync_secret"],
                              token=creds["token"], encoding_aes_key=creds["encoding_aes_key"])
    sim.start()
    yield sim
    sim.stop()


def control(sim, path: str, body: dict | None = None) -> dict:
    url = f"{sim.base_url}/control/{path}"
    response = requests.get(url, timeout=10) if body is None else requests.post(url, json=body, timeout=30)
    assert response.status_code == 200
    return response.json()


@pytest.mark.django_db(transaction=True)
def test_control_api_changes_members_and_departments_and_delivers_each_callback(standalone, live_server):
    info = control(standalone, "info")
    assert info["errcode"] == 0 and info["users"] == 10 and len(info["encoding_aes_key"]) == 43
    source = SyncSource.objects.create(
        name="Sim", slug="sim", corp_id=info["corp_id"], agent_id=info["agent_id"], secret=info["app_secret"],
        token=info["token"], encoding_aes_key=info["encoding_aes_key"], api_base_url=info["api_base_url"])
    assert run_full_sync(source).status == SyncRun.Status.SUCCEEDED
    answer = control(standalone, "callback", {"url": live_server.url + source.get_callback_path()})
    assert answer["errcode"] == 0

    def user(userid):
        return ExternalUser.objects.select_related("user").get(source=source, userid_key=userid)

    def delivered(answer):
        assert answer["errcode"] == 0 and answer["delivery_status"] == 200, answer
        return answer

    delivered(control(standalone, "departments", {"id": 50, "name": "Lab", "parentid": 1}))
    assert ExternalDepartment.objects.get(source=source, department_id=50).name == "Lab"
    delivered(control(standalone, "users", {"userid": "li.lei", "name": "Li Lei", "department": [50],
                                            "email": "li.lei@example.com"}))
    assert user("li.lei").user.email == "li.lei@example.com"
    delivered(control(standalone, "users/li.lei/update", {"name": "Li Lei (Ops)", "position": "ops"}))
    assert user("li.lei").name == "Li Lei (Ops)"
    delivered(control(standalone, "users/li.lei/move", {"department": [1], "main_department": 1}))
    assert list(user("li.lei").memberships.values_list("department__department_id", flat=True)) == [1]
    delivered(control(standalone, "users/li.lei/disable", {}))
    assert user("li.lei").user.is_active is False
    delivered(control(standalone, "users/li.lei/enable", {}))
    assert user("li.lei").user.is_active is True
    delivered(control(standalone, "departments/50/update", {"name": "Laboratory"}))
    assert ExternalDepartment.objects.get(source=source, department_id=50).name == "Laboratory"
    other = sorted(d for d in standalone.org.departments if d not in (1, 50))[0]
    delivered(control(standalone, "departments/50/move", {"parentid": other}))
    assert ExternalDepartment.objects.get(source=source, department_id=50).parent.department_id == other
    delivered(control(standalone, "users/li.lei/delete", {}))
    assert user("li.lei").user.is_active is False and user("li.lei").is_removed
    delivered(control(standalone, "departments/50/delete", {}))
    assert ExternalDepartment.objects.get(source=source, department_id=50).is_removed

    # What WeCom refuses, the simulator refuses too, with WeCom's errcode, and nothing changes.
    refused = control(standalone, "departments/1/delete", {})
    assert refused["errcode"] == 60007 and "root" in refused["errmsg"]
    assert control(standalone, "users/nobody/update", {"name": "x"})["errcode"] == 60111
    assert control(standalone, "users/nobody/fly", {})["errcode"] == 40058
    assert control(standalone, "users", {"userid": "x"})["errcode"] == 40058


def test_credentials_follow_the_seed():
    assert credentials_from_seed(1) == credentials_from_seed(1)
    assert credentials_from_seed(1)["token"] != credentials_from_seed(2)["token"]


def test_module_prints_its_credentials_and_the_cli_drives_the_control_api(tmp_path):
    port = free_port()
    env = {**os.environ, "WECOM_SIMULATOR_URL": f"http://127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "-m", "wecom_sync.simulator", "--host", "127.0.0.1", "--port", str(port),
                             "--users", "12", "--departments", "3", "--seed", "9"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if line.startswith("Control API"):
                break
        text = "".join(banner)
        creds = credentials_from_seed(9)
        for label, value in (("Corp ID", creds["corp_id"]), ("AgentId", "1000002"),
                             ("Secret (app)", creds["app_secret"]),
                             ("Contact-sync Secret", creds["contact_sync_secret"]),
                             ("Token", creds["token"]), ("EncodingAESKey", creds["encoding_aes_key"])):
            assert re.search(rf"{re.escape(label)}.*\s{re.escape(value)}\n", text), (label, text)
        assert f"http://127.0.0.1:{port}" in text and "12 members, 3 departments" in text

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "wecom_sync.simulator", *args], env=env,
                                  capture_output=True, text=True, timeout=60)

        added = cli("add-user", "han.meimei", "--name", "Han Meimei", "--department", "1", "--set", "position=PM")
        assert added.returncode == 0, added.stderr
        assert "create_user" in json.loads(added.stdout)["event"]
        assert cli("move-user", "han.meimei", "--department", "2").returncode == 0
        assert cli("disable-user", "han.meimei").returncode == 0
        assert cli("add-department", "--name", "QA", "--id", "77", "--parent", "2").returncode == 0
        assert cli("move-department", "77", "--parent", "1").returncode == 0
        info = json.loads(cli("info").stdout)
        assert info["users"] == 13 and info["departments"] == 4
        refused = cli("remove-department", "1")
        assert refused.returncode == 1 and json.loads(refused.stdout)["errcode"] == 60007
        api = requests.get(f"http://127.0.0.1:{port}/cgi-bin/gettoken", timeout=10,
                           params={"corpid": creds["corp_id"], "corpsecret": creds["app_secret"]}).json()
        assert api["errcode"] == 0 and api["access_token"]
        member = requests.get(f"http://127.0.0.1:{port}/cgi-bin/user/get", timeout=10,
                              params={"access_token": api["access_token"], "userid": "han.meimei"}).json()
        assert member["status"] == 2 and member["department"] == [2] and member["position"] == "PM"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    gone = subprocess.run([sys.executable, "-m", "wecom_sync.simulator", "info"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert gone.returncode == 2 and "did not answer" in gone.stderr
