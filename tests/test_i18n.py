"""Chinese localisation: the zh_Hans catalogue is complete, compiled and current, and every admin page of the
app (and the demo) speaks Chinese when the language is zh-hans."""

from __future__ import annotations

import ast
import gettext as gnu_gettext
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import django
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse
from django.utils import translation

import wecom_sync
from wecom_sync import services
from wecom_sync.admin import COUNTER_LABELS, counter_label
from wecom_sync.models import (
    CallbackEvent,
    ExternalDepartment,
    ExternalMembership,
    ExternalUser,
    SyncRun,
    SyncRunChange,
    SyncSource,
)
from wecom_sync.simulator import WeComSimulator, generate_organisation

PACKAGE = Path(wecom_sync.__file__).resolve().parent
LC_MESSAGES = PACKAGE / "locale" / "zh_Hans" / "LC_MESSAGES"
PO_FILE = LC_MESSAGES / "django.po"
MO_FILE = LC_MESSAGES / "django.mo"
CJK = re.compile(r"[\u4e00-\u9fff]")


# -- a tiny .po reader (polib is not a dependency) ---------------------------------------------------------


def parse_po(text: str) -> list[dict]:
    """Return the entries of a .po file: msgid, msgid_plural, msgstr (index → text), flags, obsolete."""
    entries: list[dict] = []
    entry: dict | None = None
    key = ""
    for line in [*text.splitlines(), ""]:
        line = line.strip()
        if not line:
            if entry is not None:
                entries.append(entry)
            entry, key = None, ""
            continue
        if entry is None:
            entry = {"msgctxt": None, "msgid": "", "msgid_plural": None, "msgstr": {}, "flags": set(),
                     "obsolete": False}
        if line.startswith("#~"):
            entry["obsolete"] = True
            continue
        if line.startswith("#,"):
            entry["flags"].update(flag.strip() for flag in line[2:].split(","))
            continue
        if line.startswith("#"):
            continue
        match = re.match(r"^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(\".*\")$", line)
        if match:
            key = match.group(1)
            value = ast.literal_eval(match.group(3))
            if key.startswith("msgstr"):
                index = int(match.group(2) or 0)
                entry["msgstr"][index] = value
                key = f"msgstr:{index}"
            else:
                entry[key] = value
        elif line.startswith('"') and key:
            value = ast.literal_eval(line)
            if key.startswith("msgstr:"):
                entry["msgstr"][int(key[7:])] += value
            else:
                entry[key] = (entry[key] or "") + value
        else:
            raise AssertionError(f"unexpected .po line: {line!r}")
    return entries


def catalogue() -> list[dict]:
    """The live (non-header, non-obsolete) entries of the shipped catalogue."""
    return [e for e in parse_po(PO_FILE.read_text(encoding="utf-8")) if e["msgid"] and not e["obsolete"]]


def require_gettext() -> None:
    """GNU gettext (xgettext, msgfmt) is needed by makemessages; CI installs it."""
    if shutil.which("xgettext") and shutil.which("msgfmt"):
        return
    if os.environ.get("CI"):
        pytest.fail("GNU gettext is missing and CI is set: .ci/run installs the gettext package.")
    pytest.skip("GNU gettext is not installed (apt-get install gettext).")


# -- (a) complete: no empty, no fuzzy ------------------------------------------------------------------------


def test_catalogue_has_no_empty_or_fuzzy_entry():
    text = PO_FILE.read_text(encoding="utf-8")
    header = parse_po(text)[0]
    assert header["msgid"] == "" and "fuzzy" not in header["flags"]
    assert "Plural-Forms: nplurals=1; plural=0;" in header["msgstr"][0]
    assert "Language: zh_Hans" in header["msgstr"][0]
    entries = catalogue()
    assert len(entries) > 300
    fuzzy = [e["msgid"] for e in entries if "fuzzy" in e["flags"]]
    empty = [e["msgid"] for e in entries if not all(v.strip() for v in e["msgstr"].values()) or not e["msgstr"]]
    assert fuzzy == [] and empty == []
    plural_forms = {tuple(sorted(e["msgstr"])) for e in entries if e["msgid_plural"]}
    assert plural_forms <= {(0,)}, "zh_Hans has one plural form"
    # Placeholders survive translation, and the text is Chinese unless it is a console term kept as is.
    for entry in entries:
        placeholders = set(re.findall(r"%\(\w+\)[-\d.]*[sdf]", entry["msgid"]))
        assert set(re.findall(r"%\(\w+\)[-\d.]*[sdf]", entry["msgstr"][0])) == placeholders, entry["msgid"]
    untouched = {e["msgid"] for e in entries if e["msgstr"][0] == e["msgid"]}
    assert untouched <= {"AgentId", "Secret", "Token", "EncodingAESKey", "API", "userid"}, untouched
    # The WeCom console's own words appear where the admin must match them.
    translations = " ".join(e["msgstr"][0] for e in entries)
    for term in ("企业ID", "AgentId", "Secret", "通讯录同步", "可信IP", "接收事件服务器", "Token", "EncodingAESKey",
                 "可见范围", "立即同步", "试运行", "测试连接", "批准", "拒绝", "重试", "重新处理", "生成", "复制"):
        assert term in translations, term


def test_msgfmt_accepts_the_catalogue():
    require_gettext()
    result = subprocess.run(["msgfmt", "--check", "--statistics", "-o", os.devnull, str(PO_FILE)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "fuzzy" not in result.stderr and "untranslated" not in result.stderr, result.stderr


# -- (b) current: makemessages finds nothing new ------------------------------------------------------------


def test_makemessages_finds_no_new_msgid(tmp_path, monkeypatch):
    require_gettext()
    copy = tmp_path / "wecom_sync"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.mo"))
    monkeypatch.chdir(copy)
    call_command("makemessages", locale=["zh_Hans"], verbosity=0)
    fresh = [e for e in parse_po((copy / "locale/zh_Hans/LC_MESSAGES/django.po").read_text(encoding="utf-8"))
             if e["msgid"] and not e["obsolete"]]
    shipped = {(e["msgctxt"], e["msgid"], e["msgid_plural"]) for e in catalogue()}
    new = sorted(str(m) for m in {(e["msgctxt"], e["msgid"], e["msgid_plural"]) for e in fresh} - shipped)
    assert new == [], "run `cd wecom_sync && django-admin makemessages -l zh_Hans`, translate, compile:\n" + \
        "\n".join(new)
    assert len(fresh) > 300


# -- (c) compiled: the .mo says what the .po says ---------------------------------------------------------


def test_mo_matches_po():
    with MO_FILE.open("rb") as handle:
        compiled = gnu_gettext.GNUTranslations(handle)
    mo = {k: v for k, v in compiled._catalog.items() if k != ""}  # noqa: SLF001 - the parsed .mo table
    expected: dict = {}
    for entry in catalogue():
        msgid = entry["msgid"] if entry["msgctxt"] is None else f"{entry['msgctxt']}\x04{entry['msgid']}"
        if entry["msgid_plural"] is None:
            expected[msgid] = entry["msgstr"][0]
        else:
            for index, text in entry["msgstr"].items():
                expected[(msgid, index)] = text
    assert mo == expected, "run `cd wecom_sync && django-admin compilemessages`"


def test_counter_labels_are_in_the_catalogue():
    msgids = {e["msgid"] for e in catalogue()}
    assert {str(label) for label in COUNTER_LABELS.values()} <= msgids
    with translation.override("zh-hans"):
        assert counter_label("users_created") == "新建用户"
        assert counter_label("approved_users_deactivated") == "批准后：停用用户"


# -- (d) every admin page of the app in zh-hans ----------------------------------------------------------------


class VisibleText(HTMLParser):
    """Collect the text a reader sees: text nodes and button labels; not scripts, styles, code or data dumps."""

    SKIP = {"script", "style", "code", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        values = dict(attrs)
        if tag == "input" and values.get("type") in ("submit", "button") and values.get("value"):
            self.parts.append(values["value"])

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1

    def handle_data(self, data: str) -> None:
        text = data.strip()
        if not text or self.skipping:
            return
        if text[0] in "{[":
            try:
                json.loads(text)
                return  # a JSON field's value (an event payload, a change's fields): data, not interface
            except ValueError:
                pass
        self.parts.append(text)


def visible_text(html: str) -> str:
    parser = VisibleText()
    parser.feed(html)
    return "\n".join(parser.parts)


def django_own_msgids() -> set[str]:
    """Django's own English strings (some have no zh_Hans translation yet: Django's business, not the app's)."""
    root = Path(django.__file__).resolve().parent
    msgids: set[str] = set()
    for po in root.glob("**/locale/en/LC_MESSAGES/*.po"):
        for entry in parse_po(po.read_text(encoding="utf-8")):
            msgids.update(filter(None, (entry["msgid"], entry["msgid_plural"])))
    return msgids


def english_leftovers(text: str) -> list[str]:
    """The app's English msgids (without placeholders, longer than 3 characters) found in the text.

    A line that is exactly one of Django's own strings (and not one of the app's) is left out first.
    """
    entries = catalogue()
    ours = {e["msgid"] for e in entries}
    theirs = django_own_msgids() - ours
    text = "\n".join(line for line in text.splitlines() if line.strip() not in theirs)
    found = []
    for entry in entries:
        for english in filter(None, (entry["msgid"], entry["msgid_plural"])):
            if "%" in english or len(english) <= 3 or english == entry["msgstr"][0]:
                continue
            if re.search(r"(?<![A-Za-z0-9_])" + re.escape(english) + r"(?![A-Za-z0-9_])", text):
                found.append(english)
    return found


@pytest.fixture(autouse=True)
def _no_language_leak():
    """The test client's requests activate a language in this thread; do not leave it for other tests."""
    yield
    translation.deactivate()


@pytest.fixture
def zh():
    with override_settings(LANGUAGE_CODE="zh-hans"), translation.override("zh-hans"):
        yield


@pytest.fixture
def sim():
    with WeComSimulator(generate_organisation(users=40, departments=6, seed=11)) as simulator:
        yield simulator


@pytest.mark.django_db
def test_every_admin_page_of_the_app_is_chinese(client, sim, zh):
    source = SyncSource.objects.create(
        name="演示企业", slug="zh", corp_id=sim.corp_id, agent_id=sim.agent_id, secret=sim.app_secret,
        api_base_url=sim.base_url, token="Tk7fG2hJ9kL4mN6pQ8rS1tU3vW5xY0zA",
        encoding_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", removal_threshold_count=3,
    )
    broken = SyncSource.objects.create(
        name="错误的 Secret", slug="broken", corp_id=sim.corp_id, agent_id=sim.agent_id, secret="wrong-secret",
        api_base_url=sim.base_url,
    )
    # Runs write their messages in the active language (zh-hans here), as a worker with LANGUAGE_CODE would.
    full = services.run_full_sync(source)
    assert full.status == SyncRun.Status.SUCCEEDED, full.message
    users = sorted(sim.org.users)
    sim.update_user(users[0], name="Renamed In WeCom", deliver=False)
    dry = services.run_full_sync(source, dry_run=True)
    for userid in users[1:7]:
        sim.delete_user(userid, deliver=False)
    held = services.run_full_sync(source)
    assert held.status == SyncRun.Status.HELD, held.message
    failed = services.run_full_sync(broken)
    assert failed.status == SyncRun.Status.FAILED
    assert CJK.search(held.message) and CJK.search(failed.message), (held.message, failed.message)
    events = [
        CallbackEvent.objects.create(
            source=source, dedupe_key=f"k{n}", event="change_contact", change_type="delete_user", object_id=userid,
            payload={"ToUserName": sim.corp_id, "MsgType": "event", "Event": "change_contact",
                     "ChangeType": "delete_user", "UserID": userid},
            status=status, attempts=attempts, last_error=error,
        )
        for n, (userid, status, attempts, error) in enumerate([
            (users[1], CallbackEvent.Status.PENDING, 0, ""),
            (users[2], CallbackEvent.Status.FAILED, 5, str(failed.message)),
            (users[3], CallbackEvent.Status.IGNORED, 1, translation.gettext("The source is disabled.")),
        ])
    ]
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw"))

    user = ExternalUser.objects.filter(source=source).first()
    department = ExternalDepartment.objects.filter(source=source).first()
    membership = ExternalMembership.objects.filter(user__source=source).first()
    change = SyncRunChange.objects.filter(run=full).first()
    pages = [reverse("admin:app_list", args=["wecom_sync"])]
    pages += [reverse(f"admin:wecom_sync_{model}_changelist") for model in (
        "syncsource", "syncrun", "syncrunchange", "externaluser", "externaldepartment", "externalmembership",
        "callbackevent")]
    pages += [
        reverse("admin:wecom_sync_syncsource_add"),
        reverse("admin:wecom_sync_syncsource_change", args=[source.pk]),
        reverse("admin:wecom_sync_syncsource_change", args=[broken.pk]),
        reverse("admin:wecom_sync_externaldepartment_tree"),
        reverse("admin:wecom_sync_externaluser_change", args=[user.pk]),
        reverse("admin:wecom_sync_externaldepartment_change", args=[department.pk]),
        reverse("admin:wecom_sync_externalmembership_change", args=[membership.pk]),
        reverse("admin:wecom_sync_syncrunchange_change", args=[change.pk]),
        reverse("admin:wecom_sync_syncrunchange_changelist") + "?action=created",
        reverse("admin:wecom_sync_syncrun_changelist") + "?status__exact=held",
    ]
    pages += [reverse("admin:wecom_sync_syncrun_change", args=[run.pk]) for run in SyncRun.objects.all()]
    pages += [reverse("admin:wecom_sync_callbackevent_change", args=[event.pk]) for event in events]

    problems = {}
    rendered = {}
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        text = visible_text(response.content.decode())
        rendered[url] = text
        leftovers = english_leftovers(text)
        if leftovers:
            problems[url] = leftovers

    # Test connection, on a working and a broken source at once (the list action).
    response = client.post(reverse("admin:wecom_sync_syncsource_changelist"), {
        "action": "test_connection_action", "_selected_action": [source.pk, broken.pk]})
    assert response.status_code == 200
    probe = visible_text(response.content.decode())
    if english_leftovers(probe):
        problems["test connection"] = english_leftovers(probe)
    assert problems == {}

    # And the Chinese is really there: labels, buttons, statuses, stored messages, errcode hints.
    source_page = rendered[reverse("admin:wecom_sync_syncsource_change", args=[source.pk])]
    for word in ("基本信息", "凭据", "回调（实时同步）", "同步行为", "立即同步", "试运行", "测试连接", "企业ID",
                 "回调 URL", "复制", "通讯录同步 Secret"):
        assert word in source_page, word
    held_page = rendered[reverse("admin:wecom_sync_syncrun_change", args=[held.pk])]
    for word in ("暂停待审批", "批准并执行移除", "拒绝：不移除任何人", "没有移除任何人"):
        assert word in held_page, word
    dry_page = rendered[reverse("admin:wecom_sync_syncrun_change", args=[dry.pk])]
    assert "计划的变更" in dry_page and "试运行：没有应用任何变更" in dry_page
    assert "全部检查通过" in probe and "部分检查未通过" in probe
    assert "Secret 错误、已被重置" in probe  # errcode 40001's hint, translated where it is shown
    assert "重新处理所选事件" in rendered[reverse("admin:wecom_sync_callbackevent_changelist")]
    assert "部门树" in rendered[reverse("admin:wecom_sync_externaldepartment_tree")]
    # Every counter a run wrote has a translated label.
    keys = {key for run in SyncRun.objects.all() for key in (run.counters or {})}
    assert all(CJK.search(counter_label(key)) for key in keys), sorted(keys)


@pytest.mark.django_db
def test_admin_follows_the_language_cookie(client):
    """The language selector (set_language) switches the admin between English and Chinese."""
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw"))
    url = reverse("admin:wecom_sync_syncsource_add")
    english = client.get(url).content.decode()
    assert 'id="language-selector"' in english and "Credentials" in english
    response = client.post(reverse("set_language"), {"language": "zh-hans", "next": url})
    assert response.status_code == 302
    chinese = visible_text(client.get(url).content.decode())
    assert "凭据" in chinese and "Credentials" not in chinese


# -- (e) the demo prints Chinese ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_demo_prints_chinese(zh):
    out = io.StringIO()
    call_command("wecom_demo", users=60, departments=6, stdout=out, stderr=io.StringIO())
    text = out.getvalue()
    for words in ("准备数据库", "全量同步", "新建用户", "本地镜像", "收到 6 个回调", "本地的变化", "完成"):
        assert words in text, text[-3000:]
    assert "✘" not in text
    # Identifiers in the output (the admin username, URL paths, userids) are data; phrases are interface.
    phrases = [english for english in english_leftovers(text) if " " in english]
    assert phrases == []
