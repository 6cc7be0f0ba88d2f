"""Rate limits, circuit breakers, idempotency keys and the cache (backpressure:
test_backpressure.py).

The embedded tier: every state store in process memory. tests/test_redis.py
runs the same features against a real Redis and several Gunicorn workers.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient
from werkzeug.exceptions import InternalServerError

from {{ cookiecutter.package_name }}.auth import users
from {{ cookiecutter.package_name }}.config import ConfigError
from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.models import Item, User
from {{ cookiecutter.package_name }}.resilience import exempt, protected

from conftest import PASSWORD, AppFactory, add_account, problem, signed_in

ITEMS = "/api/v1/items"


def limited_app(make_app: AppFactory, **overrides: Any) -> Flask:
    """An app with rate limits on (tests turn them off by default)."""
    return make_app(RATE_LIMITS_ENABLED=True, tables=True, **overrides)


def policies(**limits: str) -> dict[str, dict[str, Any]]:
    """The shipped policies, with some limits replaced."""
    return {
        "read": {"limit": limits.get("read", "300 per minute")},
        "write": {"limit": limits.get("write", "60 per minute"), "idempotency": True},
        "pricing": {
            "limit": limits.get("pricing", "120 per minute"),
            "breaker": "pricing",
        },
    }


# --- Rate limits -------------------------------------------------------------


def test_a_policy_limit_answers_429_with_headers(make_app: AppFactory) -> None:
    app = limited_app(make_app, RESILIENCE_POLICIES=policies(read="2 per minute"))
    client = app.test_client()
    first = client.get(ITEMS)
    assert first.status_code == 200
    assert first.headers["RateLimit-Limit"] == "2"
    assert first.headers["RateLimit-Remaining"] == "1"
    assert 0 <= int(first.headers["RateLimit-Reset"]) <= 60
    assert first.headers["RateLimit-Policy"] == "2;w=60"
    assert client.get(ITEMS).headers["RateLimit-Remaining"] == "0"
    refused = client.get(ITEMS)
    body = problem(refused, 429)
    assert body["title"] == "Too Many Requests"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Remaining"] == "0"


def test_each_policy_counts_on_its_own(make_app: AppFactory) -> None:
    app = limited_app(make_app, RESILIENCE_POLICIES=policies(write="1 per minute"))
    client = signed_in(app)[0]
    assert client.post(ITEMS, json={"name": "a"}).status_code == 201
    problem(client.post(ITEMS, json={"name": "b"}), 429)
    assert client.get(ITEMS).status_code == 200


def test_the_views_of_a_policy_share_its_limit(make_app: AppFactory) -> None:
    # One counter per policy and client, whichever of its views is called:
    # "write" at 2 per minute allows 2 writes, not 2 per method.
    app = limited_app(make_app, RESILIENCE_POLICIES=policies(write="2 per minute"))
    client = signed_in(app)[0]
    created = client.post(ITEMS, json={"name": "a"})
    assert created.status_code == 201
    assert (
        client.patch(created.headers["Location"], json={"quantity": 2}).status_code
        == 200
    )
    problem(client.delete(created.headers["Location"]), 429)
    assert count_items(app) == 1


def test_a_request_counts_once_against_its_views_policy_only(
    make_app: AppFactory,
) -> None:
    app = limited_app(
        make_app,
        RESILIENCE_POLICIES=policies(read="3 per minute"),
        RATELIMIT_DEFAULT="3 per minute",
    )
    client = app.test_client()
    remaining = [client.get(ITEMS).headers["RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    problem(client.get(ITEMS), 429)
    # The default limit of views without a policy was not touched meanwhile.
    document = client.get("/api/openapi.json")
    assert document.headers["RateLimit-Remaining"] == "2"


def test_options_and_unrouted_paths_count_against_the_default_limit(
    make_app: AppFactory,
) -> None:
    app = limited_app(
        make_app,
        RESILIENCE_POLICIES=policies(read="5 per minute"),
        RATELIMIT_DEFAULT="3 per minute",
    )
    client = app.test_client()
    options = client.options(ITEMS)
    assert options.status_code == 200
    assert options.headers["RateLimit-Policy"] == "3;w=60"
    assert options.headers["RateLimit-Remaining"] == "2"
    assert client.get("/no/such/path").headers["RateLimit-Remaining"] == "1"
    # A method the route does not serve reaches no view either.
    assert client.put(ITEMS).headers["RateLimit-Remaining"] == "0"
    problem(client.get("/another/path"), 429)
    problem(client.options(ITEMS), 429)
    # The view's own policy still has all of its quota.
    assert client.get(ITEMS).headers["RateLimit-Remaining"] == "4"


def test_views_without_a_policy_get_the_default_limit(make_app: AppFactory) -> None:
    client = limited_app(make_app, RATELIMIT_DEFAULT="1 per minute").test_client()
    assert client.get("/api/openapi.json").status_code == 200
    problem(client.get("/api/openapi.json"), 429)


def test_health_probes_are_never_limited(make_app: AppFactory) -> None:
    client = limited_app(make_app, RATELIMIT_DEFAULT="1 per minute").test_client()
    for _ in range(5):
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/ready").status_code == 200
    # A path under the probes' prefix that no probe serves is not a probe.
    assert client.get("/health/nothing").status_code == 404
    problem(client.get("/health/nothing"), 429)


def test_clients_are_counted_by_address(make_app: AppFactory) -> None:
    app = limited_app(make_app, RESILIENCE_POLICIES=policies(read="1 per minute"))
    client = app.test_client()
    first = {"REMOTE_ADDR": "192.0.2.1"}
    second = {"REMOTE_ADDR": "192.0.2.2"}
    assert client.get(ITEMS, environ_base=first).status_code == 200
    assert client.get(ITEMS, environ_base=second).status_code == 200
    problem(client.get(ITEMS, environ_base=first), 429)


def test_forwarded_addresses_count_only_behind_trusted_proxies(
    make_app: AppFactory,
) -> None:
    limit = policies(read="1 per minute")
    untrusting = limited_app(make_app, RESILIENCE_POLICIES=limit).test_client()
    assert (
        untrusting.get(ITEMS, headers={"X-Forwarded-For": "198.51.100.1"}).status_code
        == 200
    )
    # A forged header does not buy a fresh quota.
    problem(untrusting.get(ITEMS, headers={"X-Forwarded-For": "198.51.100.2"}), 429)

    trusting = limited_app(
        make_app, RESILIENCE_POLICIES=limit, TRUSTED_PROXIES=1
    ).test_client()
    assert (
        trusting.get(ITEMS, headers={"X-Forwarded-For": "198.51.100.1"}).status_code
        == 200
    )
    assert (
        trusting.get(ITEMS, headers={"X-Forwarded-For": "198.51.100.2"}).status_code
        == 200
    )


def test_verified_callers_get_their_own_quota(make_app: AppFactory) -> None:
    app = limited_app(make_app, RESILIENCE_POLICIES=policies(read="1 per minute"))
    first = add_account(app, "one@example.com")
    second = add_account(app, "two@example.com")
    client = app.test_client()
    assert client.get(ITEMS, headers=first.headers).status_code == 200
    assert client.get(ITEMS, headers=second.headers).status_code == 200
    # The address has its own quota; a key that fails verification counts as it.
    assert client.get(ITEMS).status_code == 200
    problem(client.get(ITEMS, headers={"X-API-Key": "ak_000000000000_forged"}), 429)
    problem(client.get(ITEMS, headers=first.headers), 429)


def test_a_users_api_keys_and_tokens_share_one_quota(make_app: AppFactory) -> None:
    app = limited_app(make_app, RESILIENCE_POLICIES=policies(write="10 per minute"))
    owner = add_account(app, "owner@example.com")
    other = add_account(app, "other@example.com")
    with app.app_context():
        user = db.session.get(User, owner.id)
        assert user is not None
        extra = [users.create_api_key(user, f"key {n}", ["write"]) for n in range(4)]
        keys = [owner.api_key, *(plain for _, plain in extra)]
        token = users.sign_in(user).access_token
        other_user = db.session.get(User, other.id)
        assert other_user is not None
        other_token = users.sign_in(other_user).access_token
    client = app.test_client()

    def writes(headers: dict[str, str], count: int) -> list[int]:
        return [
            client.post(ITEMS, json={"name": "w"}, headers=headers).status_code
            for _ in range(count)
        ]

    # One token: ten writes, then 429.
    alone = writes({"Authorization": f"Bearer {other_token}"}, 20)
    assert (alone.count(201), alone.count(429)) == (10, 10)
    # Five keys of one user, ten writes each: ten in all, as for the token.
    spread = [status for key in keys for status in writes({"X-API-Key": key}, 10)]
    assert (spread.count(201), spread.count(429)) == (10, 40)
    # The user's token draws on the same quota.
    assert writes({"Authorization": f"Bearer {token}"}, 1) == [429]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("POLICY_LIMIT_WRITE", "lots", "POLICY_LIMIT_WRITE='lots' is not a rate"),
        ("RATELIMIT_DEFAULT", "1 per fortnight", "RATELIMIT_DEFAULT='1 per fort"),
        ("REDIS_URL", "http://cache:6379", "REDIS_URL is not a Redis URL"),
        ("TRUSTED_PROXIES", "-1", "TRUSTED_PROXIES='-1' must be at least 0"),
    ],
)
def test_bad_resilience_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    make_app: AppFactory,
    name: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"^{message}"):
        make_app("development")


def test_limits_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    monkeypatch.setenv("POLICY_LIMIT_READ", "7 per second")
    monkeypatch.setenv("RATELIMIT_DEFAULT", "9 per hour")
    config = make_app().config
    assert config["RESILIENCE_POLICIES"]["read"]["limit"] == "7 per second"
    assert config["RATELIMIT_DEFAULT"] == "9 per hour"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"read": {"limit": "often"}}, r"\['read'\] limit 'often' is not a rate"),
        ({"read": {"limt": "1/second"}}, r"\['read'\] has unknown settings"),
        ({"read": {"breaker": "billing"}}, r"names breaker 'billing'"),
        ({"default": {"limit": "1/second"}}, r"\['default'\]: the name is the pol"),
    ],
)
def test_bad_policies_are_refused_at_start(
    make_app: AppFactory, setting: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_app(RESILIENCE_POLICIES=setting)


def test_bad_breaker_settings_are_refused_at_start(make_app: AppFactory) -> None:
    with pytest.raises(ConfigError, match=r"CIRCUIT_BREAKERS\['pricing'\] has unknown"):
        make_app(CIRCUIT_BREAKERS={"pricing": {"failmax": 3}})


# --- Circuit breakers -----------------------------------------------------------


def test_dependencies_report_closed_breakers(client: FlaskClient) -> None:
    assert client.get("/health/dependencies").json == {
        "status": "pass",
        "dependencies": {
            "pricing": {"state": "closed", "failures": 0, "retry_after": None}
        },
    }


# --- Idempotency keys ----------------------------------------------------------


def count_items(app: Flask) -> int:
    with app.app_context():
        return db.session.query(Item).count()


def test_a_retried_post_runs_once_and_replays(app: Flask, client: FlaskClient) -> None:
    key = {"Idempotency-Key": "order-0001"}
    first = client.post(ITEMS, json={"name": "Once"}, headers=key)
    again = client.post(ITEMS, json={"name": "Once"}, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.get_data() == first.get_data()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert count_items(app) == 1


def test_the_same_key_for_another_request_is_a_422(client: FlaskClient) -> None:
    key = {"Idempotency-Key": "order-0002"}
    assert client.post(ITEMS, json={"name": "One"}, headers=key).status_code == 201
    body = problem(client.post(ITEMS, json={"name": "Two"}, headers=key), 422)
    assert body["errors"] == [
        {
            "field": "Idempotency-Key",
            "message": "This key was already used for a different request.",
            "code": "idempotency_key_reused",
        }
    ]


def test_a_retry_while_the_first_runs_is_a_409(make_app: AppFactory) -> None:
    app = make_app()
    release = threading.Event()
    entered = threading.Event()

    @app.post("/slow-write")
    @protected("write")
    def slow_write() -> tuple[str, int]:
        entered.set()
        release.wait(10)
        return "written", 201

    key = {"Idempotency-Key": "slow-1"}
    first: list[Any] = []
    runner = threading.Thread(
        target=lambda: first.append(app.test_client().post("/slow-write", headers=key))
    )
    runner.start()
    try:
        assert entered.wait(5)
        problem(app.test_client().post("/slow-write", headers=key), 409)
    finally:
        release.set()
        runner.join(5)
    assert first[0].status_code == 201
    replay = app.test_client().post("/slow-write", headers=key)
    assert (replay.status_code, replay.get_data()) == (201, b"written")


def test_server_errors_are_not_kept(make_app: AppFactory) -> None:
    app = make_app()
    calls: list[int] = []

    @app.post("/flaky")
    @protected("write")
    def flaky() -> tuple[str, int]:
        calls.append(1)
        if len(calls) == 1:
            raise InternalServerError
        return "ok", 201

    client = app.test_client()
    key = {"Idempotency-Key": "flaky-1"}
    problem(client.post("/flaky", headers=key), 500)
    assert client.post("/flaky", headers=key).status_code == 201
    assert len(calls) == 2


def test_keys_are_scoped_to_the_user_whatever_their_credential(app: Flask) -> None:
    key = {"Idempotency-Key": "shared-name"}
    owner = add_account(app, "one@example.com")
    with app.app_context():
        user = db.session.get(User, owner.id)
        assert user is not None
        _, second_key = users.create_api_key(user, "second", ["read", "write"])
    client = app.test_client()
    signed = client.post(
        "/api/v1/auth/token", json={"email": owner.email, "password": PASSWORD}
    )
    token = {"Authorization": f"Bearer {signed.json['access_token']}"}  # type: ignore[index]
    first = client.post(ITEMS, json={"name": "Mine"}, headers=owner.headers | key)
    assert first.status_code == 201
    # The retry carries another key of the user's, or a token: it finds the
    # first request's answer, and the item is made once.
    for credential in ({"X-API-Key": second_key}, token):
        again = client.post(ITEMS, json={"name": "Mine"}, headers=credential | key)
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.get_data() == first.get_data()
    assert count_items(app) == 1
    # Another user's key of the same name is another key.
    other = add_account(app, "two@example.com").headers | key
    response = client.post(ITEMS, json={"name": "Mine"}, headers=other)
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response.headers
    assert count_items(app) == 2


def test_keys_expire(make_app: AppFactory) -> None:
    app = make_app(IDEMPOTENCY_TTL=1, tables=True)
    client = signed_in(app)[0]
    key = {"Idempotency-Key": "short-lived"}
    assert client.post(ITEMS, json={"name": "A"}, headers=key).status_code == 201
    time.sleep(1.1)
    second = client.post(ITEMS, json={"name": "B"}, headers=key)
    assert second.status_code == 201
    assert "Idempotent-Replayed" not in second.headers


def test_a_retry_whose_key_has_no_record_runs_and_is_logged(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    first = {"Idempotency-Key": "order-0042"}
    assert client.post(ITEMS, json={"name": "A"}, headers=first).status_code == 201
    retry = {**first, "Idempotency-Retry": "true"}
    with caplog.at_level("WARNING"):
        replayed = client.post(ITEMS, json={"name": "A"}, headers=retry)
        assert replayed.headers["Idempotent-Replayed"] == "true"
        unmarked = {"Idempotency-Key": "order-0043"}
        created = client.post(ITEMS, json={"name": "B"}, headers=unmarked)
        assert created.status_code == 201
        assert "has no record" not in caplog.text
        # A retry of a request whose record expired or was lost (a Redis flush):
        # it runs again, and the log says so.
        marked = {"Idempotency-Key": "order-0044", "Idempotency-Retry": "true"}
        created = client.post(ITEMS, json={"name": "C"}, headers=marked)
        assert created.status_code == 201
    warnings = [r for r in caplog.records if "has no record" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelname == "WARNING"
    assert "POST /api/v1/items" in warnings[0].getMessage()
    assert count_items(app) == 3


@pytest.mark.parametrize("method", ["POST", "PATCH", "DELETE"])
@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9"])
def test_malformed_keys_are_422s_naming_the_header(
    app: Flask, client: FlaskClient, key: str, method: str
) -> None:
    # What the documented header schema refuses is a 422, as for any field.
    url = ITEMS if method == "POST" else f"{ITEMS}/1"
    response = client.open(
        url, method=method, json={"name": "x"}, headers={"Idempotency-Key": key}
    )
    body = problem(response, 422)
    assert [error["field"] for error in body["errors"]] == ["Idempotency-Key"]
    assert count_items(app) == 0


def test_requests_without_a_key_run_every_time(app: Flask, client: FlaskClient) -> None:
    for _ in range(2):
        assert client.post(ITEMS, json={"name": "Twice"}).status_code == 201
    assert count_items(app) == 2


def test_deletes_and_patches_take_keys_too(client: FlaskClient) -> None:
    item = client.post(ITEMS, json={"name": "x"}).json
    assert item is not None
    url = f"{ITEMS}/{item['id']}"
    key = {"Idempotency-Key": "delete-1"}
    assert client.delete(url, headers=key).status_code == 204
    replay = client.delete(url, headers=key)
    assert (replay.status_code, replay.headers["Idempotent-Replayed"]) == (204, "true")
    assert client.delete(url).status_code == 404


# --- Cache ---------------------------------------------------------------------


def test_the_items_list_is_cached_and_forgotten_on_writes(
    make_app: AppFactory,
) -> None:
    app = make_app(CACHE_TYPE="SimpleCache", tables=True)
    client = signed_in(app)[0]
    assert client.post(ITEMS, json={"name": "First"}).status_code == 201
    assert client.get(ITEMS).json["total"] == 1  # type: ignore[index]
    # Written behind the API's back: the cached page does not know.
    with app.app_context():
        db.session.add(Item(name="Sneaky"))
        db.session.commit()
    assert client.get(ITEMS).json["total"] == 1  # type: ignore[index]
    # A page with other parameters is a separate entry.
    assert client.get(f"{ITEMS}?per_page=5").json["total"] == 2  # type: ignore[index]
    # Any write through the API forgets every cached page.
    assert client.post(ITEMS, json={"name": "Third"}).status_code == 201
    assert client.get(ITEMS).json["total"] == 3  # type: ignore[index]


def test_exempt_keeps_a_blueprint_out_of_limits_and_shedding(
    make_app: AppFactory,
) -> None:
    probes = exempt(Blueprint("extra_probes", __name__))

    @probes.get("/extra-live")
    def extra_live() -> str:
        return "ok"

    app = limited_app(make_app, RATELIMIT_DEFAULT="1 per minute")
    app.register_blueprint(probes)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/extra-live").status_code == 200
