"""The WeCom simulator: organisation generator, HTTP API (shapes, credentials, errcodes), faults, mutations
and encrypted change_contact delivery, and compatibility with a third-party client (wechatpy)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit
from xml.etree import ElementTree

import pytest
import requests

from wecom_sync.crypto import WeComCrypto
from wecom_sync.simulator import (
    RESTRICTED_USER_FIELDS,
    SimulatorError,
    WeComSimulator,
    generate_organisation,
)

# -- shared fixture (candidate for tests/conftest.py) ---------------------------------------------------


@pytest.fixture
def simulator() -> Iterator[WeComSimulator]:
    """A running simulator with a small deterministic organisation (60 users, 12 departments)."""
    with WeComSimulator(generate_organisation(users=60, departments=12, seed=7, max_depth=5)) as sim:
        yield sim


# -- helpers ----------------------------------------------------------------------------------------

CALLBACK_TOKEN = "SimCallbackToken123"
CALLBACK_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"


def api(sim: WeComSimulator, path: str, token: str | None = None, method: str = "GET", body=None, **params):
    if token is not None:
        params["access_token"] = token
    response = requests.request(method, f"{sim.base_url}/cgi-bin/{path}", params=params, json=body, timeout=10)
    return response


def token_for(sim: WeComSimulator, secret: str | None = None) -> str:
    data = api(sim, "gettoken", corpid=sim.corp_id, corpsecret=secret or sim.app_secret).json()
    assert data["errcode"] == 0, data
    return data["access_token"]


def parse_event(xml: str) -> dict[str, str]:
    root = ElementTree.fromstring(xml)
    return {child.tag: (child.text or "") for child in root}


# -- generator --------------------------------------------------------------------------------------


def test_generator_is_deterministic_per_seed():
    a = generate_organisation(users=200, departments=20, seed=3)
    b = generate_organisation(users=200, departments=20, seed=3)
    c = generate_organisation(users=200, departments=20, seed=4)
    dump = lambda org: json.dumps([org.departments, org.users], sort_keys=True, ensure_ascii=False)  # noqa: E731
    assert dump(a) == dump(b)
    assert dump(a) != dump(c)


def test_generator_shape():
    org = generate_organisation(users=400, departments=40, seed=1, max_depth=15)
    assert len(org.users) == 400
    assert len(org.departments) == 40
    root = org.departments[1]
    assert root["parentid"] == 0
    assert max(org.depth(d) for d in org.departments) == 15
    for dept in org.departments.values():
        assert set(dept) == {"id", "name", "name_en", "department_leader", "parentid", "order"}
        assert dept["id"] == 1 or dept["parentid"] in org.departments
        assert 1 <= len(dept["name"]) <= 32
    keys = set()
    for user in org.users.values():
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", user["userid"])
        assert len(user["department"]) == len(user["order"]) == len(user["is_leader_in_dept"]) >= 1
        assert user["main_department"] in user["department"]
        assert all(d in org.departments for d in user["department"])
        keys.add(user["userid"].lower())
        for dept_id, leader in zip(user["department"], user["is_leader_in_dept"], strict=True):
            assert bool(leader) == (user["userid"] in org.departments[dept_id]["department_leader"])
    assert len(keys) == 400, "userids must be unique case-insensitively"
    users = list(org.users.values())
    assert {u["status"] for u in users} == {1, 2, 4, 5}
    assert any(len(u["department"]) > 1 for u in users)
    assert any(u["userid"] != u["userid"].lower() for u in users)
    assert any(re.search(r"[\u4e00-\u9fff]", u["name"]) for u in users)
    assert any(re.fullmatch(r"[A-Za-z]+ [A-Za-z]+", u["name"]) for u in users)
    assert sum(1 for d in org.departments.values() if d["department_leader"]) >= 5
    assert any(u["direct_leader"] for u in users)
    assert {"mobile", "email", "avatar", "gender", "extattr", "status", "position"} <= set(users[0])


def test_generator_restricted_fields():
    org = generate_organisation(users=50, departments=5, restricted_fields=True)
    for user in org.users.values():
        assert not set(RESTRICTED_USER_FIELDS) & set(user)
        assert user["name"]


@pytest.mark.slow
def test_generator_makes_a_100k_organisation():
    # How fast is measured by bench/simulator.py, not here.
    org = generate_organisation(users=100_000, departments=2_000, max_depth=15)
    assert len(org.users) == 100_000
    assert len(org.departments) == 2_000


# -- credentials and tokens -------------------------------------------------------------------------


def test_gettoken_shape_and_credentials(simulator):
    data = api(simulator, "gettoken", corpid=simulator.corp_id, corpsecret=simulator.app_secret).json()
    assert data["errcode"] == 0 and data["errmsg"] == "ok"
    assert data["expires_in"] == 7200
    assert 0 < len(data["access_token"]) <= 512
    wrong_secret = api(simulator, "gettoken", corpid=simulator.corp_id, corpsecret="nope").json()
    assert wrong_secret["errcode"] == 40001
    wrong_corp = api(simulator, "gettoken", corpid="wwother", corpsecret=simulator.app_secret).json()
    assert wrong_corp["errcode"] == 40013
    assert "nope" not in wrong_secret["errmsg"]


def test_token_errors(simulator):
    assert api(simulator, "department/list").json()["errcode"] == 41001
    assert api(simulator, "department/list", token="forged").json()["errcode"] == 40014
    token = token_for(simulator)
    assert api(simulator, "department/list", token=token).json()["errcode"] == 0
    simulator.faults.expire_tokens()
    assert api(simulator, "department/list", token=token).json()["errcode"] == 42001
    simulator.faults.invalidate_tokens()
    assert api(simulator, "department/list", token=token).json()["errcode"] == 40014
    assert api(simulator, "department/list", token=token_for(simulator)).json()["errcode"] == 0


def test_contact_sync_secret_rights(simulator):
    app = token_for(simulator)
    contact = token_for(simulator, simulator.contact_sync_secret)
    assert api(simulator, "user/list_id", app, method="POST", body={}).json()["errcode"] == 48002
    assert api(simulator, "user/list_id", contact, method="POST", body={}).json()["errcode"] == 0
    userid = next(iter(simulator.org.users))
    assert api(simulator, "user/get", contact, userid=userid).json()["errcode"] == 0
    simulator.faults.forbid_contact_detail(True)
    for path, params in [("user/get", {"userid": userid}), ("department/get", {"id": 1}),
                         ("user/list", {"department_id": 1}), ("department/list", {})]:
        assert api(simulator, path, contact, **params).json()["errcode"] == 48009, path
        assert api(simulator, path, app, **params).json()["errcode"] == 0, path
    assert api(simulator, "department/simplelist", contact).json()["errcode"] == 0
    assert api(simulator, "user/list_id", contact, method="POST", body={}).json()["errcode"] == 0


def test_app_scope_limits_what_the_app_secret_sees(simulator):
    org = simulator.org
    visible_root = max(org.children(1), key=lambda d: len(org.subtree(d)))
    hidden = next(d for d in org.children(1) if d != visible_root)
    simulator.set_app_scope([visible_root])
    app = token_for(simulator)
    contact = token_for(simulator, simulator.contact_sync_secret)
    listed = api(simulator, "department/list", app).json()["department"]
    assert [d["id"] for d in listed] == org.subtree(visible_root)
    assert api(simulator, "department/get", app, id=hidden).json()["errcode"] == 60011
    assert api(simulator, "user/list", app, department_id=hidden).json()["errcode"] == 60011
    assert len(api(simulator, "department/simplelist", contact).json()["department_id"]) == len(org.departments)
    outsider = next(u for u in org.users.values() if not set(u["department"]) & set(org.subtree(visible_root)))
    assert api(simulator, "user/get", app, userid=outsider["userid"]).json()["errcode"] == 60011
    both = next((u for u in org.users.values() if len(set(u["department"]) & set(org.subtree(visible_root)))
                 not in (0, len(u["department"]))), None)
    if both is not None:  # a member of a visible and a hidden department sees only the visible one
        seen = api(simulator, "user/get", app, userid=both["userid"]).json()
        assert set(seen["department"]) < set(both["department"])
        assert len(seen["order"]) == len(seen["department"])
    simulator.set_app_scope(None)
    assert api(simulator, "department/get", app, id=hidden).json()["errcode"] == 0


# -- directory APIs ---------------------------------------------------------------------------------


def test_department_apis(simulator):
    token = token_for(simulator)
    org = simulator.org
    everything = api(simulator, "department/list", token).json()["department"]
    assert sorted(d["id"] for d in everything) == sorted(org.departments)
    child = org.children(1)[0]
    subtree = api(simulator, "department/list", token, id=child).json()["department"]
    assert [d["id"] for d in subtree] == org.subtree(child)
    assert subtree[0] == org.departments[child]
    simple = api(simulator, "department/simplelist", token, id=child).json()["department_id"]
    assert all(set(item) == {"id", "parentid", "order"} for item in simple)
    assert [d["id"] for d in simple] == org.subtree(child)
    got = api(simulator, "department/get", token, id=child).json()
    assert got["errcode"] == 0 and got["department"] == org.departments[child]
    assert api(simulator, "department/get", token, id=99999).json()["errcode"] == 60123
    assert api(simulator, "department/list", token, id=99999).json()["errcode"] == 60123


def test_user_apis(simulator):
    token = token_for(simulator)
    org = simulator.org
    user = next(u for u in org.users.values() if u["userid"] != u["userid"].lower())
    got = api(simulator, "user/get", token, userid=user["userid"].upper()).json()
    assert got["errcode"] == 0
    assert {k: v for k, v in got.items() if k not in ("errcode", "errmsg")} == user
    assert api(simulator, "user/get", token, userid="nobody").json()["errcode"] == 60111
    dept = user["department"][0]
    listed = api(simulator, "user/list", token, department_id=dept).json()["userlist"]
    assert [u["userid"] for u in listed] == org.members(dept)
    assert user in listed
    simple = api(simulator, "user/simplelist", token, department_id=dept).json()["userlist"]
    assert all(set(u) == {"userid", "name", "department"} for u in simple)
    assert api(simulator, "user/list", token, department_id=99999).json()["errcode"] == 60123
    children = api(simulator, "user/list", token, department_id=1, fetch_child=1).json()["userlist"]
    assert len(children) == len(org.users)


def test_user_list_id_pagination(simulator):
    token = token_for(simulator, simulator.contact_sync_secret)
    rows, cursor, pages = [], None, 0
    while True:
        body = {"limit": 25} if cursor is None else {"limit": 25, "cursor": cursor}
        data = api(simulator, "user/list_id", token, method="POST", body=body).json()
        assert data["errcode"] == 0
        assert len(data["dept_user"]) <= 25
        rows.extend(data["dept_user"])
        pages += 1
        cursor = data["next_cursor"]
        if not cursor:
            break
    expected = [{"userid": u["userid"], "department": d} for u in simulator.org.users.values() for d in u["department"]]
    assert rows == expected
    assert pages == -(-len(expected) // 25) >= 3
    for bad in (0, 10001):
        assert api(simulator, "user/list_id", token, method="POST", body={"limit": bad}).json()["errcode"] == 40058
    assert api(simulator, "user/list_id", token, method="POST", body={"cursor": "x"}).json()["errcode"] == 40058
    assert api(simulator, "user/list_id", token).json()["errcode"] == 43002


# -- faults -----------------------------------------------------------------------------------------


def test_faults(simulator):
    token = token_for(simulator)
    simulator.faults.fail_next(45009, count=2, path="user/list")
    assert api(simulator, "department/list", token).json()["errcode"] == 0
    assert api(simulator, "user/list", token, department_id=1).json()["errcode"] == 45009
    assert api(simulator, "user/list", token, department_id=1).json()["errcode"] == 45009
    assert api(simulator, "user/list", token, department_id=1).json()["errcode"] == 0
    simulator.faults.http_error_next(503)
    assert api(simulator, "department/list", token).status_code == 503
    assert api(simulator, "department/list", token).status_code == 200
    simulator.faults.delay(0.3, path="department/get")
    started = time.monotonic()
    api(simulator, "department/get", token, id=1)
    assert time.monotonic() - started >= 0.3
    simulator.faults.fail_next(-1)
    simulator.faults.truncate_pagination()
    simulator.faults.clear()
    assert api(simulator, "department/get", token, id=1).json()["errcode"] == 0
    assert simulator.calls["/cgi-bin/user/list"] == 3
    assert simulator.calls["/cgi-bin/gettoken"] == 1


def test_truncated_pagination(simulator):
    token = token_for(simulator, simulator.contact_sync_secret)
    simulator.faults.truncate_pagination()
    first = api(simulator, "user/list_id", token, method="POST", body={"limit": 10}).json()
    assert first["next_cursor"]
    second = api(simulator, "user/list_id", token, method="POST", body={"limit": 10, "cursor": first["next_cursor"]})
    assert second.json()["errcode"] == 40058
    simulator.faults.truncate_pagination(silent=True)
    silent = api(simulator, "user/list_id", token, method="POST", body={"limit": 10}).json()
    assert silent["errcode"] == 0 and silent["next_cursor"] == "" and len(silent["dept_user"]) == 10


def test_stop_closes_the_port():
    sim = WeComSimulator(generate_organisation(users=5, departments=2)).start()
    url = sim.base_url
    assert requests.get(f"{url}/cgi-bin/gettoken", timeout=5).status_code == 200
    sim.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/cgi-bin/gettoken", timeout=5)


# -- mutations and events ---------------------------------------------------------------------------


def test_user_mutations_and_trimmed_events(simulator):
    token = token_for(simulator)
    dept_a, dept_b = simulator.org.children(1)[:2]
    xml = simulator.add_user({"userid": "NewPerson", "name": "新人", "department": [dept_a, dept_b]})
    event = parse_event(xml)
    assert event["ToUserName"] == simulator.corp_id
    assert event["FromUserName"] == "sys"
    assert event["MsgType"] == "event" and event["Event"] == "change_contact"
    assert event["ChangeType"] == "create_user"
    assert event["UserID"] == "NewPerson"
    assert event["Department"] == f"{dept_a},{dept_b}"
    assert "Name" not in event, "events are trimmed to ids by default"
    assert api(simulator, "user/get", token, userid="newperson").json()["name"] == "新人"
    listed = api(simulator, "user/list", token, department_id=dept_b).json()["userlist"]
    assert "NewPerson" in [u["userid"] for u in listed]

    full = parse_event(simulator.update_user("NewPerson", position="工程师", full_payload=True))
    assert full["ChangeType"] == "update_user" and full["Position"] == "工程师"
    assert "Mobile" not in full, "update_user carries only the changed attributes"

    both = simulator.update_user("NewPerson", department=[dept_b], main_department=dept_b, full_payload=True)
    assert parse_event(both)["Department"] == str(dept_b) and parse_event(both)["MainDepartment"] == str(dept_b)
    served = api(simulator, "user/get", token, userid="NewPerson").json()
    assert (served["department"], served["main_department"], len(served["order"])) == ([dept_b], dept_b, 1)

    rename = parse_event(simulator.rename_userid("NewPerson", "new.person"))
    assert (rename["UserID"], rename["NewUserID"]) == ("NewPerson", "new.person")
    assert api(simulator, "user/get", token, userid="NewPerson").json()["errcode"] == 60111
    assert api(simulator, "user/get", token, userid="new.person").json()["errcode"] == 0

    moved = parse_event(simulator.move_user("new.person", [dept_b], full_payload=True))
    assert moved["Department"] == str(dept_b) and moved["MainDepartment"] == str(dept_b)
    status = parse_event(simulator.set_user_status("new.person", 2, full_payload=True))
    assert status["Status"] == "2"
    assert api(simulator, "user/get", token, userid="new.person").json()["status"] == 2

    deleted = parse_event(simulator.delete_user("new.person"))
    assert deleted["ChangeType"] == "delete_user"
    assert set(deleted) == {"ToUserName", "FromUserName", "CreateTime", "MsgType", "Event", "ChangeType", "UserID"}
    assert api(simulator, "user/get", token, userid="new.person").json()["errcode"] == 60111
    times = [int(parse_event(x)["CreateTime"]) for x in simulator.events]
    assert times == sorted(set(times)), "CreateTime strictly increases"
    with pytest.raises(SimulatorError):
        simulator.add_user({"userid": "NEWPERSON2", "name": "x", "department": [424242]})


def test_department_mutations_and_events(simulator):
    token = token_for(simulator)
    created = parse_event(simulator.add_department({"id": 500, "name": "新部门", "parentid": 1}, full_payload=True))
    assert created["ChangeType"] == "create_party"
    assert (created["Id"], created["Name"], created["ParentId"]) == ("500", "新部门", "1")
    assert "Order" in created
    assert api(simulator, "department/get", token, id=500).json()["department"]["name"] == "新部门"
    trimmed = parse_event(simulator.update_department(500, name="改名"))
    assert set(trimmed) >= {"Id", "ParentId"} and "Name" not in trimmed
    target = simulator.org.children(1)[0]
    moved = parse_event(simulator.move_department(500, target))
    assert moved["ParentId"] == str(target)
    assert 500 in [d["id"] for d in api(simulator, "department/list", token, id=target).json()["department"]]
    with pytest.raises(SimulatorError) as excinfo:
        simulator.move_department(target, 500)
    assert excinfo.value.errcode == 60010
    busy = next(d for d in simulator.org.departments if simulator.org.members(d))
    with pytest.raises(SimulatorError):
        simulator.delete_department(busy)
    deleted = parse_event(simulator.delete_department(500))
    assert deleted["ChangeType"] == "delete_party" and deleted["Id"] == "500" and "ParentId" not in deleted
    assert api(simulator, "department/get", token, id=500).json()["errcode"] == 60123


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], str]] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.received.append((dict(parse_qsl(urlsplit(self.path).query)), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        return


@pytest.fixture
def receiver() -> Iterator[tuple[str, list]]:
    received: list[tuple[dict[str, str], str]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/wecom/callback/acme/", received
    server.shutdown()
    server.server_close()


def test_events_are_delivered_encrypted(simulator, receiver):
    url, received = receiver
    simulator.set_callback(url, CALLBACK_TOKEN, CALLBACK_KEY)
    xml = simulator.update_user(next(iter(simulator.org.users)), position="总监")
    assert len(received) == 1
    params, body = received[0]
    assert set(params) == {"msg_signature", "timestamp", "nonce"}
    envelope = ElementTree.fromstring(body)
    assert envelope.findtext("ToUserName") == simulator.corp_id
    crypto = WeComCrypto(CALLBACK_TOKEN, CALLBACK_KEY, receive_id=simulator.corp_id)
    plain = crypto.decrypt_message(params["msg_signature"], params["timestamp"], params["nonce"],
                                   envelope.findtext("Encrypt"))
    assert plain == xml
    assert simulator.deliveries == [(xml, 200)]
    simulator.add_department({"name": "不投递"}, deliver=False)
    assert len(received) == 1
    body2, params2 = simulator.build_callback(simulator.events[-1])
    encrypted = ElementTree.fromstring(body2).findtext("Encrypt")
    assert crypto.decrypt_message(params2["msg_signature"], params2["timestamp"], params2["nonce"], encrypted) == (
        simulator.events[-1]
    )


# -- compatibility with a third-party client ---------------------------------------------------------


def test_wechatpy_reads_the_simulator(simulator):
    from wechatpy.enterprise import WeChatClient

    class SimulatorWeChatClient(WeChatClient):
        # wechatpy builds API URLs from API_BASE_URL, but gettoken's URL is written out in full.
        API_BASE_URL = simulator.base_url + "/cgi-bin/"

        def fetch_access_token(self):
            return self._fetch_access_token(
                url=self.API_BASE_URL + "gettoken", params={"corpid": self.corp_id, "corpsecret": self.secret}
            )

    client = SimulatorWeChatClient(simulator.corp_id, simulator.app_secret)
    departments = client.department.get()
    assert sorted(d["id"] for d in departments) == sorted(simulator.org.departments)
    dept = next(d for d in simulator.org.departments if simulator.org.members(d))
    users = client.user.list(dept)
    assert [u["userid"] for u in users] == simulator.org.members(dept)
    everyone = client.department.get_users(1, fetch_child=1, simple=True)
    assert len(everyone) == len(simulator.org.users)
    user = client.user.get(users[0]["userid"])
    assert user["name"] == simulator.org.users[users[0]["userid"]]["name"]
    # wechatpy refreshes its token on 40014 and retries: the simulator's invalidation is handled.
    simulator.faults.invalidate_tokens()
    assert client.user.get(users[0]["userid"])["userid"] == users[0]["userid"]
    assert simulator.calls["/cgi-bin/gettoken"] == 2


def test_peak_in_flight_counts_overlapping_requests(simulator):
    from concurrent.futures import ThreadPoolExecutor

    simulator.faults.delay(0.3, path="gettoken")
    api(simulator, "gettoken", corpid=simulator.corp_id, corpsecret=simulator.app_secret)
    api(simulator, "gettoken", corpid=simulator.corp_id, corpsecret=simulator.app_secret)
    assert simulator.peak_in_flight["/cgi-bin/gettoken"] == 1  # one after the other
    simulator.reset_calls()
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: api(simulator, "gettoken", corpid=simulator.corp_id,
                                    corpsecret=simulator.app_secret), range(3)))
    assert simulator.peak_in_flight["/cgi-bin/gettoken"] == 3
    assert simulator.in_flight["/cgi-bin/gettoken"] == 0


def test_tags_and_messages_in_the_simulator():
    """tag/list, tag/get (visible range applied), tag mutations with update_tag events, message/send records."""
    from wecom_sync.client import WeComClient
    from wecom_sync.exceptions import WeComAPIError

    with WeComSimulator(generate_organisation(users=20, departments=5, seed=2)) as sim:
        client = WeComClient(sim.corp_id, sim.app_secret, base_url=sim.base_url)
        assert {t["tagid"] for t in client.list_tags()} == set(sim.org.tags)
        assert any(t["userlist"] for t in sim.org.tags.values()) and any(t["partylist"] for t in sim.org.tags.values())
        userid = sorted(sim.org.users)[0]
        tag_id = sim.add_tag("测试", users=[userid], departments=[2])
        tag = client.get_tag(tag_id)
        assert tag["tagname"] == "测试" and tag["userlist"][0]["userid"] == userid and tag["partylist"] == [2]
        event = sim.add_tag_users(tag_id, [sorted(sim.org.users)[1]])
        assert "<ChangeType><![CDATA[update_tag]]></ChangeType>" in event and "AddUserItems" in event
        sim.del_tag_users(tag_id, [userid], [2])
        assert sim.org.tags[tag_id]["userlist"] == [sorted(sim.org.users)[1]]
        assert sim.org.tags[tag_id]["partylist"] == []
        sim.rename_userid(sorted(sim.org.users)[1], "renamed.one")
        assert sim.org.tags[tag_id]["userlist"] == ["renamed.one"]
        sim.delete_tag(tag_id)
        with pytest.raises(WeComAPIError) as error:
            client.get_tag(tag_id)
        assert error.value.errcode == 40068
        answer = client.send_message({"agentid": sim.agent_id, "msgtype": "text", "text": {"content": "hi"},
                                      "touser": f"{userid}|nobody"})
        assert answer["invaliduser"] == "nobody"
        assert sim.messages_to(userid)[0]["content"] == {"content": "hi"}
        with pytest.raises(WeComAPIError) as error:
            client.send_message({"agentid": sim.agent_id, "msgtype": "text", "text": {"content": "hi"},
                                 "touser": "nobody"})
        assert error.value.errcode == 81013
        with pytest.raises(WeComAPIError) as error:
            client.send_message({"agentid": 1, "msgtype": "text", "text": {"content": "hi"}, "touser": userid})
        assert error.value.errcode == 301002
        assert len(sim.messages) == 1
        client.close()
