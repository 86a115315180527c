"""App messages (wecom_sync.messages.send_message) against the simulator's message/send over HTTP."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse

from tests.factories import make_source
from wecom_sync.messages import MessageError, MessageResult, send_message
from wecom_sync.models import ExternalDepartment, ExternalTag, ExternalUser, SyncRun
from wecom_sync.services import run_full_sync
from wecom_sync.simulator import WeComSimulator, generate_organisation
from wecom_sync.tasks import send_message as send_message_task

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()
SEND = "/cgi-bin/message/send"


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=20, departments=5, seed=5)) as simulator:
        yield simulator


@pytest.fixture
def source(sim, settings):
    settings.WECOM_SYNC = {**settings.WECOM_SYNC, "SYNC_TAGS": True}
    src = make_source(corp_id=sim.corp_id, secret=sim.app_secret, contact_sync_secret="",
                      api_base_url=sim.base_url, agent_id=sim.agent_id)
    assert run_full_sync(src).status == SyncRun.Status.SUCCEEDED
    sim.reset_calls()
    return src


def mapped_users(source, count: int) -> list:
    exts = ExternalUser.objects.filter(source=source, is_removed=False).select_related("user").order_by("userid_key")
    return [e.user for e in exts[:count]]


def userid_of(source, user) -> str:
    return ExternalUser.objects.get(source=source, user=user).userid


def test_text_to_mapped_and_unmapped_users(sim, source):
    users = mapped_users(source, 3)
    stranger = User.objects.create_user("no-wecom-account")
    result = send_message(source, users=[*users, stranger], text="周五下午三点开会")
    assert isinstance(result, MessageResult)
    assert result.unmapped == [stranger]
    assert result.unreachable == []
    assert result.sent and len(result.msgids) == 1 and result.calls == 1
    assert sim.calls[SEND] == 1
    [message] = sim.messages
    assert message["msgtype"] == "text" and message["content"] == {"content": "周五下午三点开会"}
    assert message["agentid"] == sim.agent_id
    assert set(message["recipients"]) == {userid_of(source, u) for u in users}
    assert result.reached == [userid_of(source, u) for u in users]


def test_nobody_reachable_means_no_call(sim, source):
    strangers = [User.objects.create_user(f"stranger{i}") for i in range(2)]
    result = send_message(source, users=strangers, text="hello")
    assert result.unmapped == strangers
    assert not result.sent and result.calls == 0
    assert sim.calls[SEND] == 0 and sim.calls["/cgi-bin/gettoken"] == 0
    assert send_message(source, users=[], text="hello").calls == 0
    assert sim.calls[SEND] == 0


def test_removed_mapping_counts_as_unmapped(sim, source):
    user = mapped_users(source, 1)[0]
    ExternalUser.objects.filter(source=source, user=user).update(is_removed=True)
    result = send_message(source, users=[user], text="hi")
    assert result.unmapped == [user] and sim.calls[SEND] == 0


def test_unknown_and_unlicensed_userids_are_unreachable(sim, source):
    known = userid_of(source, mapped_users(source, 2)[0])
    unlicensed = userid_of(source, mapped_users(source, 2)[1])
    sim.unlicensed_users.add(unlicensed)
    result = send_message(source, users=[known, "ghost.user", unlicensed], markdown="**注意**")
    assert sorted(result.unreachable) == sorted(["ghost.user", unlicensed])
    assert result.reached == [known]
    assert sim.messages[-1]["recipients"] == [known]
    assert sim.messages[-1]["msgtype"] == "markdown"


def test_all_targets_invalid_reports_everyone_unreachable(sim, source):
    result = send_message(source, users=["ghost1", "ghost2"], text="hi")
    assert result.unreachable == ["ghost1", "ghost2"]
    assert not result.sent and sim.messages == []


def test_departments_and_tags_as_rows_and_ids(sim, source):
    dept = ExternalDepartment.objects.filter(source=source).exclude(department_id=1).order_by("department_id").first()
    tag = ExternalTag.objects.get(source=source, tag_id=2)
    card = {"title": "报销提醒", "description": "请在月底前提交", "url": "https://example.com/expense"}
    result = send_message(source, departments=[dept, 999], tags=[tag, 3, 77], textcard=card)
    assert result.invalid_departments == [999] and result.invalid_tags == [77]
    message = sim.messages[-1]
    assert message["toparty"] == [str(dept.department_id), "999"] and message["totag"] == ["2", "3", "77"]
    assert message["content"]["title"] == "报销提醒" and message["msgtype"] == "textcard"
    expected = sim.tag_members(2) | sim.tag_members(3)
    for sub in sim.org.subtree(dept.department_id):
        expected |= set(sim.org.members(sub))
    assert set(message["recipients"]) == expected


def test_more_than_a_thousand_userids_go_in_chunks(sim, source):
    real = [userid_of(source, u) for u in mapped_users(source, 5)]
    userids = [f"ghost{i:04d}" for i in range(2100)]
    for position, userid in zip((0, 1000, 2000, 2050, 2100), real, strict=True):
        userids.insert(position, userid)  # every chunk reaches somebody
    result = send_message(source, users=userids, text="chunked")
    assert sim.calls[SEND] == 3 and result.calls == 3
    sizes = [len(m["touser"]) for m in sim.messages]
    assert sizes == [1000, 1000, 105]
    assert len(result.unreachable) == 2100
    assert result.reached == real
    assert {r for m in sim.messages for r in m["recipients"]} == set(real)
    assert len(result.msgids) == 3


def test_a_failed_call_is_retried(sim, source):
    sim.faults.fail_next(-1, count=2, path="message/send")
    result = send_message(source, users=[userid_of(source, mapped_users(source, 1)[0])], text="retry me")
    assert result.sent and len(sim.messages) == 1
    assert sim.calls[SEND] == 3


def test_bad_input_changes_nothing(sim, source):
    user = mapped_users(source, 1)[0]
    with pytest.raises(MessageError):
        send_message(source, users=[user], text="a", markdown="b")
    with pytest.raises(MessageError):
        send_message(source, users=[user])
    with pytest.raises(MessageError):
        send_message(source, users=[user], textcard={"title": "no url"})
    with pytest.raises(MessageError):
        send_message(source, users=[user.pk], text="a primary key is not a userid")
    other = make_source()
    with pytest.raises(MessageError):
        send_message(other, departments=[ExternalDepartment.objects.filter(source=source).first()], text="x")
    source.agent_id = None
    with pytest.raises(MessageError):
        send_message(source, users=[user], text="x")
    assert sim.calls[SEND] == 0


def test_celery_task_sends_in_the_background(sim, source):
    users = mapped_users(source, 2)
    stranger = User.objects.create_user("outsider")
    summary = send_message_task.delay(source.pk, user_ids=[u.pk for u in users] + [stranger.pk], text="bg").get()
    assert summary["unmapped"] == [stranger.pk]
    assert set(sim.messages[-1]["recipients"]) == {userid_of(source, u) for u in users}


# -- the admin action ------------------------------------------------------------------------------------


def _changelist(model) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def test_admin_action_on_django_users(sim, source, admin_client):
    users = mapped_users(source, 2)
    stranger = User.objects.create_user("no-account-here")
    selected = [str(u.pk) for u in (*users, stranger)]
    url = _changelist(User)
    page = admin_client.post(url, {"action": "send_wecom_message", "_selected_action": selected})
    assert page.status_code == 200 and b"wecom-send-message-form" in page.content
    assert sim.calls[SEND] == 0
    response = admin_client.post(url, {
        "action": "send_wecom_message", "_selected_action": selected, "apply": "1",
        "source": source.pk, "msgtype": "text", "content": "来自后台的消息",
    }, follow=True)
    assert response.status_code == 200
    text = response.content.decode()
    assert "no-account-here" in text
    assert sim.messages[-1]["content"] == {"content": "来自后台的消息"}
    assert set(sim.messages[-1]["recipients"]) == {userid_of(source, u) for u in users}


def test_admin_action_on_wecom_users_textcard(sim, source, admin_client):
    exts = list(ExternalUser.objects.filter(source=source, is_removed=False).order_by("pk")[:2])
    url = _changelist(ExternalUser)
    response = admin_client.post(url, {
        "action": "send_wecom_message", "_selected_action": [str(e.pk) for e in exts], "apply": "1",
        "source": source.pk, "msgtype": "textcard", "content": "详情见链接", "title": "通知", "url": "https://example.com",
    }, follow=True)
    assert response.status_code == 200
    assert sim.messages[-1]["msgtype"] == "textcard"
    assert set(sim.messages[-1]["recipients"]) == {e.userid for e in exts}


def test_admin_action_form_errors_send_nothing(sim, source, admin_client):
    user = mapped_users(source, 1)[0]
    response = admin_client.post(_changelist(User), {
        "action": "send_wecom_message", "_selected_action": [str(user.pk)], "apply": "1",
        "source": source.pk, "msgtype": "textcard", "content": "no title",
    })
    assert response.status_code == 200 and b"errorlist" in response.content
    assert sim.calls[SEND] == 0


def test_admin_action_needs_the_send_permission(sim, source, client):
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_user", "change_user"]))
    client.force_login(staff)
    page = client.get(_changelist(User))
    assert page.status_code == 200 and b"send_wecom_message" not in page.content
    staff.user_permissions.add(Permission.objects.get(codename="send_message", content_type__app_label="wecom_sync"))
    staff = User.objects.get(pk=staff.pk)
    client.force_login(staff)
    assert b"send_wecom_message" in client.get(_changelist(User)).content
