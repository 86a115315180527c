"""WeComClient and fetch_snapshot against the real simulator server (no mocks): token cache and lock,
refresh on token errors, retries and backoff, typed errors and hints, pagination, both fetch strategies,
problems on partial failure, and no secret or token in errors, reprs or logs."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Iterator

import pytest
from django.core.cache import caches
from django.test import override_settings

from tests.factories import make_source
from wecom_sync.client import WeComClient, redact
from wecom_sync.exceptions import ERRCODE_HINTS, WeComAPIError, WeComError, WeComTransportError
from wecom_sync.simulator import WeComSimulator, generate_organisation
from wecom_sync.sync.fetch import fetch_snapshot

FAST_RETRIES = {
    "ENCRYPTION_KEYS": ["tests-encryption-key-1"],
    "API_HOSTS": ["qyapi.weixin.qq.com", "127.0.0.1", "localhost"],
    "API_RETRY_BASE_DELAY": 0.01,
    "API_RETRY_MAX_SECONDS": 5.0,
}


@pytest.fixture(autouse=True)
def _empty_token_cache() -> Iterator[None]:
    caches["default"].clear()
    yield
    caches["default"].clear()


@pytest.fixture
def sim() -> Iterator[WeComSimulator]:
    with WeComSimulator(generate_organisation(users=80, departments=14, seed=11, max_depth=6)) as simulator:
        yield simulator


def app_client(sim: WeComSimulator, **kwargs) -> WeComClient:
    return WeComClient(sim.corp_id, sim.app_secret, base_url=sim.base_url, **kwargs)


def contact_client(sim: WeComSimulator) -> WeComClient:
    return WeComClient(sim.corp_id, sim.contact_sync_secret, base_url=sim.base_url)


def source_for(sim: WeComSimulator, **overrides):
    values = {
        "corp_id": sim.corp_id,
        "secret": sim.app_secret,
        "contact_sync_secret": sim.contact_sync_secret,
        "api_base_url": sim.base_url,
    }
    values.update(overrides)
    return make_source(**values)


def gettoken_calls(sim: WeComSimulator) -> int:
    return sim.calls["/cgi-bin/gettoken"]


# -- token cache --------------------------------------------------------------------------------------


def test_token_is_shared_by_two_client_instances(sim):
    first, second = app_client(sim), app_client(sim)
    assert first.get_department(1)["id"] == 1
    assert second.get_department(1)["id"] == 1
    assert second.list_users(1) == [sim.org.users[u] for u in sim.org.members(1)]
    assert gettoken_calls(sim) == 1
    assert sim.calls["/cgi-bin/department/get"] == 2
    # Another secret has its own token; the cache key holds a digest, never the secret.
    contact_client(sim).simplelist_departments()
    assert gettoken_calls(sim) == 2
    assert sim.app_secret not in first._token_key and sim.corp_id in first._token_key
    assert first._token_key != contact_client(sim)._token_key
    assert caches["default"].get(first._token_key)["token"] == first.get_access_token()


def test_one_gettoken_for_eight_threads_with_an_empty_cache(sim):
    sim.faults.delay(0.3, path="gettoken")  # the first fetch is slow: the others must wait for it
    barrier = threading.Barrier(8)
    tokens: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        client = app_client(sim)
        barrier.wait()
        try:
            client.get_department(1)
            tokens.append(client.get_access_token())
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert gettoken_calls(sim) == 1
    assert len(tokens) == 8 and len(set(tokens)) == 1


def _worker_token(base_url: str, corp_id: str, secret: str, barrier, queue) -> None:
    client = WeComClient(corp_id, secret, base_url=base_url, cache_alias="shared_tokens")
    barrier.wait()
    queue.put(client.get_access_token())


@pytest.mark.redis
def test_one_gettoken_for_four_processes_sharing_redis(sim, redis_url):
    """Separate worker processes (the production case) share the token through Redis: one gettoken."""
    import multiprocessing

    caches_setting = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "shared_tokens": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url,
                          "KEY_PREFIX": f"test-client-{time.time_ns()}"},
    }
    sim.faults.delay(0.3, path="gettoken")
    context = multiprocessing.get_context("fork")
    with override_settings(CACHES=caches_setting):
        barrier, queue = context.Barrier(4), context.Queue()
        processes = [
            context.Process(target=_worker_token, args=(sim.base_url, sim.corp_id, sim.app_secret, barrier, queue))
            for _ in range(4)
        ]
        for process in processes:
            process.start()
        tokens = [queue.get(timeout=30) for _ in processes]
        for process in processes:
            process.join(timeout=30)
        caches["shared_tokens"].clear()
    assert all(process.exitcode == 0 for process in processes)
    assert len(set(tokens)) == 1
    assert gettoken_calls(sim) == 1


def test_a_worker_waits_for_the_token_another_worker_is_fetching(sim):
    """The cross-process path: the cache lock is held elsewhere, so this client waits and re-reads."""
    client = app_client(sim)
    cache = caches["default"]
    assert cache.add(client._token_key + ":lock", "other-worker", timeout=10)
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(client.get_access_token()))
    thread.start()
    time.sleep(0.3)
    assert not result and gettoken_calls(sim) == 0
    other = app_client(sim)
    token = other._fetch_token()  # what the lock holder does; it then releases the lock
    cache.delete(client._token_key + ":lock")
    thread.join(timeout=10)
    assert result == [token]
    assert gettoken_calls(sim) == 1


def test_token_is_refreshed_early(sim):
    sim.token_ttl = 1000
    with override_settings(WECOM_SYNC={**FAST_RETRIES, "TOKEN_REFRESH_MARGIN": 300}):
        client = app_client(sim)
        client.get_access_token()
        entry = caches["default"].get(client._token_key)
        assert 690 <= entry["refresh_at"] - time.time() <= 700
        assert 990 <= entry["expires_at"] - time.time() <= 1000
        # Past the refresh time (but before expiry) a new token is fetched.
        caches["default"].set(client._token_key, {**entry, "refresh_at": time.time() - 1})
        client._token = None
        assert client.get_access_token() != entry["token"]
        assert gettoken_calls(sim) == 2


@pytest.mark.parametrize("errcode", [40014, 42001, 41001])
def test_token_errcodes_refresh_and_retry_once(sim, errcode):
    client = app_client(sim)
    old = client.get_access_token()
    sim.faults.fail_next(errcode, path="user/get")
    userid = next(iter(sim.org.users))
    assert client.get_user(userid)["userid"] == userid
    assert gettoken_calls(sim) == 2
    assert sim.calls["/cgi-bin/user/get"] == 2
    assert client.get_access_token() != old


def test_real_token_invalidation_and_expiry(sim):
    client = app_client(sim)
    client.get_department(1)
    sim.faults.invalidate_tokens()  # 40014 for every token issued so far
    client.get_department(1)
    sim.faults.expire_tokens()  # 42001
    other = app_client(sim)  # a fresh instance, reading the same cache
    other.get_department(1)
    assert gettoken_calls(sim) == 3
    assert sim.calls["/cgi-bin/department/get"] == 5


def test_token_error_twice_is_raised(sim):
    client = app_client(sim)
    client.get_access_token()
    sim.faults.fail_next(40014, count=2, path="department/get")
    with pytest.raises(WeComAPIError) as excinfo:
        client.get_department(1)
    assert excinfo.value.errcode == 40014
    assert sim.calls["/cgi-bin/department/get"] == 2
    assert gettoken_calls(sim) == 2


# -- retries --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("errcode", [45009, 45033, -1])
def test_transient_errcodes_are_retried_with_backoff(sim, errcode, caplog):
    client = app_client(sim)
    sim.faults.fail_next(errcode, count=2, path="department/list")
    with caplog.at_level(logging.WARNING, logger="wecom_sync.client"):
        assert len(client.list_departments()) == len(sim.org.departments)
    assert sim.calls["/cgi-bin/department/list"] == 3
    retries = [r for r in caplog.records if r.getMessage() == "wecom_sync.client.retry"]
    assert [r.attempt for r in retries] == [1, 2]
    assert all(r.errcode == errcode for r in retries)
    assert 0 < retries[0].delay <= retries[1].delay * 2  # exponential with jitter (base 0.01 s)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_http_5xx_is_retried(sim, status):
    client = app_client(sim)
    sim.faults.http_error_next(status, count=2, path="user/list")
    assert client.list_users(1) is not None
    assert sim.calls["/cgi-bin/user/list"] == 3


def test_retries_are_bounded(sim):
    with override_settings(WECOM_SYNC={**FAST_RETRIES, "API_MAX_RETRIES": 2}):
        client = app_client(sim)
        sim.faults.fail_next(45009, count=50, path="department/get")
        with pytest.raises(WeComAPIError) as excinfo:
            client.get_department(1)
    assert excinfo.value.errcode == 45009
    assert sim.calls["/cgi-bin/department/get"] == 3
    with override_settings(WECOM_SYNC={**FAST_RETRIES, "API_RETRY_BASE_DELAY": 2.0, "API_RETRY_MAX_SECONDS": 1.0}):
        sim.reset_calls()
        with pytest.raises(WeComAPIError):
            client.get_department(1)
        # The first backoff (2 s) would pass the 1 s budget, so no retry is attempted.
        assert sim.calls["/cgi-bin/department/get"] == 1


def test_http_4xx_is_not_retried(sim):
    client = app_client(sim)
    sim.faults.http_error_next(404, path="department/get")
    with pytest.raises(WeComTransportError) as excinfo:
        client.get_department(1)
    assert excinfo.value.status_code == 404
    assert sim.calls["/cgi-bin/department/get"] == 1


@pytest.mark.parametrize("errcode", [60011, 48002, 60020, 301002])
def test_permission_errors_are_not_retried(sim, errcode):
    client = app_client(sim)
    sim.faults.fail_next(errcode, path="user/list")
    with pytest.raises(WeComAPIError) as excinfo:
        client.list_users(1)
    assert excinfo.value.errcode == errcode
    assert sim.calls["/cgi-bin/user/list"] == 1


def test_bad_credentials_are_not_retried(sim):
    client = WeComClient(sim.corp_id, "wrong-secret-value", base_url=sim.base_url)
    with pytest.raises(WeComAPIError) as excinfo:
        client.get_department(1)
    assert excinfo.value.errcode == 40001
    assert gettoken_calls(sim) == 1
    wrong_corp = WeComClient("wwnotthiscorp", sim.app_secret, base_url=sim.base_url)
    with pytest.raises(WeComAPIError) as excinfo:
        wrong_corp.list_departments()
    assert excinfo.value.errcode == 40013
    assert gettoken_calls(sim) == 2
    assert sim.calls["/cgi-bin/department/get"] == 0


def test_network_errors_are_retried_then_raised(sim):
    base_url = sim.base_url
    sim.stop()
    with override_settings(WECOM_SYNC={**FAST_RETRIES, "API_MAX_RETRIES": 1}):
        client = WeComClient(sim.corp_id, sim.app_secret, base_url=base_url, timeout=(1.0, 1.0))
        with pytest.raises(WeComTransportError) as excinfo:
            client.get_department(1)
    assert client.api_calls == 2
    assert sim.app_secret not in str(excinfo.value)


def test_read_timeout_is_a_transport_error(sim):
    with override_settings(WECOM_SYNC={**FAST_RETRIES, "API_MAX_RETRIES": 0}):
        client = app_client(sim, timeout=(2.0, 0.2))
        client.get_access_token()
        sim.faults.delay(1.0, path="department/get")
        started = time.monotonic()
        with pytest.raises(WeComTransportError):
            client.get_department(1)
        assert time.monotonic() - started < 0.9


# -- typed errors and hints -----------------------------------------------------------------------------


def _error_for(sim: WeComSimulator, errcode: int) -> WeComAPIError:
    """Trigger an errcode the way it happens for real where the simulator can, else by fault injection."""
    app = app_client(sim)
    contact = contact_client(sim)
    with override_settings(WECOM_SYNC={**FAST_RETRIES, "API_MAX_RETRIES": 0}):
        try:
            if errcode == 40001:
                WeComClient(sim.corp_id, "not-the-secret", base_url=sim.base_url).get_access_token()
            elif errcode == 40013:
                WeComClient("wwwrongcorp", sim.app_secret, base_url=sim.base_url).get_access_token()
            elif errcode == 48002:
                app.list_user_ids()
            elif errcode == 48009:
                sim.faults.forbid_contact_detail(True)
                contact.get_user(next(iter(sim.org.users)))
            elif errcode == 60111:
                app.get_user("no-such-user")
            elif errcode == 60123:
                app.get_department(987654)
            elif errcode in (40014, 42001):
                app.get_access_token()
                sim.faults.fail_next(errcode, count=2, path="department/get")
                app.get_department(1)
            else:
                sim.faults.fail_next(errcode, path="department/get")
                app.get_department(1)
        except WeComAPIError as exc:
            return exc
    raise AssertionError(f"errcode {errcode} was not raised")


@pytest.mark.parametrize(
    "errcode", [40001, 40013, 40014, 42001, 45009, 48002, 48009, 60011, 60020, 60111, 60123, 301002]
)
def test_typed_errors_carry_a_hint(sim, errcode):
    error = _error_for(sim, errcode)
    assert isinstance(error, WeComAPIError) and isinstance(error, WeComError)
    assert error.errcode == errcode
    assert error.errmsg  # WeCom's own text is kept
    assert error.hint == ERRCODE_HINTS[errcode] and len(error.hint) > 20
    assert error.hint in str(error)
    assert error.api
    for text in (str(error), repr(error)):
        assert sim.app_secret not in text and sim.contact_sync_secret not in text


# -- pagination and normalisation -----------------------------------------------------------------------


def test_list_user_ids_follows_the_cursor(sim):
    client = contact_client(sim)
    rows = client.list_user_ids(limit=9)
    expected = [{"userid": u["userid"], "department": d} for u in sim.org.users.values() for d in u["department"]]
    assert rows == expected
    assert sim.calls["/cgi-bin/user/list_id"] == -(-len(expected) // 9) >= 5


def test_list_user_ids_broken_pagination_is_an_error(sim):
    client = contact_client(sim)
    sim.faults.truncate_pagination()
    with pytest.raises(WeComAPIError) as excinfo:
        client.list_user_ids(limit=10)
    assert excinfo.value.errcode == 40058


def test_userids_compare_case_insensitively(sim):
    client = app_client(sim)
    mixed = next(u for u in sim.org.users if u != u.lower())
    assert client.get_user(mixed.lower())["userid"] == mixed


# -- fetch_snapshot -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_both_strategies_fetch_the_same_snapshot(sim):
    app = fetch_snapshot(source_for(sim, fetch_strategy="app"))
    contact = fetch_snapshot(source_for(sim, fetch_strategy="contact_sync"))
    assert app.complete and contact.complete
    assert set(app.departments) == set(sim.org.departments)
    assert len(app.users) == len(sim.org.users)
    assert app.departments == contact.departments
    assert app.users == contact.users
    assert {k: u.raw for k, u in app.users.items()} == {k: u.raw for k, u in contact.users.items()}
    assert {k: d.raw for k, d in app.departments.items()} == {k: d.raw for k, d in contact.departments.items()}
    mixed = next(u for u in sim.org.users if u != u.lower())
    assert app.users[mixed.lower()].userid == mixed, "keys are normalised, the original case is kept"
    assert app.api_calls > 0 and contact.api_calls > 0


@pytest.mark.django_db
def test_automatic_strategy_follows_the_contact_sync_secret(sim):
    fetch_snapshot(source_for(sim))  # fetch_strategy "auto" with a contact-sync secret
    assert sim.calls["/cgi-bin/user/list_id"] == 1
    sim.reset_calls()
    snapshot = fetch_snapshot(source_for(sim, contact_sync_secret=""))
    assert sim.calls["/cgi-bin/user/list_id"] == 0 and sim.calls["/cgi-bin/department/simplelist"] == 0
    assert snapshot.complete and len(snapshot.users) == len(sim.org.users)


@pytest.mark.django_db
@pytest.mark.parametrize("strategy", ["app", "contact_sync"])
def test_snapshot_covers_only_the_root_subtree(sim, strategy):
    root = max(sim.org.children(1), key=lambda d: len(sim.org.subtree(d)))
    snapshot = fetch_snapshot(source_for(sim, fetch_strategy=strategy, root_department_id=root))
    subtree = sim.org.subtree(root)
    members = {u.lower() for d in subtree for u in sim.org.members(d)}
    assert snapshot.root_department_id == root
    assert list(snapshot.departments) == subtree
    assert set(snapshot.users) == members and members
    assert snapshot.complete


@pytest.mark.django_db
def test_app_strategy_records_a_failing_department(sim):
    sim.faults.fail_next(60011, path="user/list")  # the first user/list call fails, whichever it is
    snapshot = fetch_snapshot(source_for(sim, fetch_strategy="app"))
    assert not snapshot.complete
    [problem] = snapshot.problems
    assert problem.errcode == 60011 and problem.scope.startswith("department:")
    failed = int(problem.scope.split(":")[1])
    everyone = {u.lower() for u in sim.org.users}
    missing = everyone - set(snapshot.users)
    assert missing <= {u.lower() for u in sim.org.members(failed)}
    assert len(snapshot.users) == len(everyone) - len(missing)
    assert len(snapshot.departments) == len(sim.org.departments)
    assert sim.calls["/cgi-bin/user/list"] == len(sim.org.departments), "the other departments were read"


@pytest.mark.django_db
def test_contact_sync_strategy_fills_gaps_with_user_get_and_records_failures(sim):
    sim.faults.fail_next(60011, path="user/list")
    snapshot = fetch_snapshot(source_for(sim, fetch_strategy="contact_sync"))
    assert snapshot.complete, "a failed user/list is covered by user/get for the ids user/list_id gave"
    assert len(snapshot.users) == len(sim.org.users)
    assert sim.calls["/cgi-bin/user/get"] >= 1
    caches["default"].clear()
    sim.reset_calls()
    sim.faults.fail_next(60011, path="user/list")
    sim.faults.fail_next(60111, path="user/get")
    snapshot = fetch_snapshot(source_for(sim, fetch_strategy="contact_sync"))
    assert not snapshot.complete
    assert [p.errcode for p in snapshot.problems] == [60111]
    assert snapshot.problems[0].scope.startswith("user:")
    assert len(snapshot.users) == len(sim.org.users) - 1


@pytest.mark.django_db
def test_contact_sync_strategy_uses_the_app_secret_for_details(sim):
    sim.faults.forbid_contact_detail(True)  # the contact-sync secret would get 48009 for details
    snapshot = fetch_snapshot(source_for(sim, fetch_strategy="contact_sync"))
    assert snapshot.complete and len(snapshot.users) == len(sim.org.users)
    assert sim.calls["/cgi-bin/user/list_id"] == 1


@pytest.mark.django_db
def test_contact_sync_strategy_falls_back_to_department_get(sim):
    sim.faults.fail_next(60011, path="department/list")
    snapshot = fetch_snapshot(source_for(sim, fetch_strategy="contact_sync"))
    assert snapshot.complete
    assert sim.calls["/cgi-bin/department/get"] == len(sim.org.departments)
    assert set(snapshot.departments) == set(sim.org.departments)
    assert all(d.name for d in snapshot.departments.values())


@pytest.mark.django_db
def test_a_narrow_app_scope_is_detected_by_the_contact_sync_strategy(sim):
    """The app sees one branch only: ids from the contact-sync secret reveal what the app cannot read."""
    visible = max(sim.org.children(1), key=lambda d: len(sim.org.subtree(d)))
    sim.set_app_scope([visible])
    snapshot = fetch_snapshot(source_for(sim, fetch_strategy="contact_sync"))
    assert not snapshot.complete
    hidden = set(sim.org.departments) - set(sim.org.subtree(visible))
    assert {p.scope for p in snapshot.problems} >= {f"department:{d}" for d in hidden}
    assert {p.errcode for p in snapshot.problems} == {60011}
    assert set(snapshot.departments) == set(sim.org.subtree(visible))
    # The app strategy cannot even read the root it was given...
    with pytest.raises(WeComAPIError) as excinfo:
        fetch_snapshot(source_for(sim, fetch_strategy="app"))
    assert excinfo.value.errcode == 60011
    # ...but syncing just the visible branch is complete with either strategy.
    for strategy in ("app", "contact_sync"):
        branch = fetch_snapshot(source_for(sim, fetch_strategy=strategy, root_department_id=visible))
        assert branch.complete and list(branch.departments) == sim.org.subtree(visible)


@pytest.mark.django_db
def test_truncated_id_pagination_makes_the_snapshot_incomplete():
    # More than 10,000 (user, department) rows, so that user/list_id has a second page to break.
    with WeComSimulator(generate_organisation(users=8500, departments=20, seed=2)) as big:
        assert len(big.org.index.list_id_rows) > 10_000
        big.faults.truncate_pagination()
        snapshot = fetch_snapshot(source_for(big, fetch_strategy="contact_sync"))
        assert big.calls["/cgi-bin/user/list_id"] == 2
    assert not snapshot.complete
    assert [(p.scope, p.errcode) for p in snapshot.problems] == [("user/list_id", 40058)]
    assert len(snapshot.users) == 8500, "the members are still read per department"


@pytest.mark.django_db
@pytest.mark.parametrize("strategy", ["app", "contact_sync"])
def test_fetch_raises_when_nothing_can_be_fetched(sim, strategy):
    with pytest.raises(WeComAPIError) as excinfo:
        fetch_snapshot(source_for(sim, fetch_strategy=strategy, secret="wrong-app-secret-0000"))
    assert excinfo.value.errcode == 40001
    assert "wrong-app-secret-0000" not in str(excinfo.value)


@pytest.mark.django_db
def test_progress_is_reported(sim):
    seen: list[tuple[int, int]] = []
    fetch_snapshot(source_for(sim, fetch_strategy="app"), progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(sim.org.departments), len(sim.org.departments))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert all(done <= total for done, total in seen)


# -- secrets stay secret --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_secrets_and_tokens_never_reach_errors_or_logs(sim, caplog):
    caplog.set_level(logging.DEBUG)
    wrong_secret = "-".join(["a", "wrong", "secret", "1234"])  # not a literal: tracebacks quote source lines
    errors: list[BaseException] = []
    client = app_client(sim)
    client.get_department(1)
    sim.faults.invalidate_tokens()
    sim.faults.fail_next(45009, path="department/get")
    client.get_department(1)
    sim.faults.http_error_next(502, count=1)
    client.list_users(1)
    for call in (
        lambda: WeComClient(sim.corp_id, wrong_secret, base_url=sim.base_url).get_access_token(),
        lambda: client.get_user("nobody-here"),
        lambda: client.list_user_ids(),
    ):
        with pytest.raises(WeComError) as excinfo:
            call()
        errors.append(excinfo.value)
    dead_url = sim.base_url
    snapshot = fetch_snapshot(source_for(sim, fetch_strategy="contact_sync"))
    sim.stop()
    with override_settings(WECOM_SYNC={**FAST_RETRIES, "API_MAX_RETRIES": 0}):
        with pytest.raises(WeComTransportError) as excinfo:
            WeComClient(sim.corp_id, sim.app_secret, base_url=dead_url).get_department(1)
        errors.append(excinfo.value)

    secrets = [sim.app_secret, sim.contact_sync_secret, wrong_secret, *sim._tokens]
    assert len(sim._tokens) >= 3
    texts = [repr(client), repr(sim), repr(snapshot.problems)]
    for error in errors:
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
    for record in caplog.records:
        texts.append(record.getMessage())
        texts.append(repr(record.__dict__))
    assert any("urllib3" in r.name for r in caplog.records), "the HTTP library's debug lines were captured"
    blob = "\n".join(texts)
    for secret in secrets:
        assert secret not in blob


def test_redact():
    line = "GET /cgi-bin/user/get?access_token=abc.def-1&userid=x"
    assert redact(line) == "GET /cgi-bin/user/get?access_token=***&userid=x"
    assert redact("/cgi-bin/gettoken?corpid=ww1&corpsecret=s3cr3t") == "/cgi-bin/gettoken?corpid=ww1&corpsecret=***"


def test_redact_hides_userids_only_within_userids_redacted():
    from wecom_sync.client import userids_redacted

    line = "GET /cgi-bin/user/get?userid=Zhang.San&access_token=abc"
    with userids_redacted():
        assert redact(line) == "GET /cgi-bin/user/get?userid=***&access_token=***"
    assert redact(line) == "GET /cgi-bin/user/get?userid=Zhang.San&access_token=***"
