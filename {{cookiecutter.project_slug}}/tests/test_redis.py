"""The one switch: REDIS_URL puts limits, breakers, idempotency keys and the cache
in Redis, and a Redis outage degrades each of them instead of failing requests.

These tests use TEST_REDIS_URL's Redis when it is set (the CI services tier),
else an in-process fakeredis; `redis_target.cut()` takes Redis away.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask

from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.models import Item
from {{ cookiecutter.package_name }}.resilience import breakers_of, redis_store
from {{ cookiecutter.package_name }}.resilience import limits as rate_limits
from {{ cookiecutter.package_name }}.resilience.limits import listed
from {{ cookiecutter.package_name }}.resilience.store import (
    FIRST_COOL_DOWN,
    RedisGate,
)

from conftest import (
    PASSWORD,
    AppFactory,
    FakeUpstream,
    RedisTarget,
    Reply,
    outside_a_window_edge,
    problem,
    signed_in,
)

ITEMS = "/api/v1/items"
DOCUMENT = "/api/openapi.json"
AUTH = "/api/v1/auth"


def redis_app(make_app: AppFactory, target: RedisTarget, **overrides: Any) -> Flask:
    return make_app(**target.settings(), tables=True, **overrides)


def test_the_switch_moves_every_store_to_redis(
    make_app: AppFactory, redis_target: RedisTarget, pricing_upstream: FakeUpstream
) -> None:
    app = redis_app(
        make_app,
        redis_target,
        RATE_LIMITS_ENABLED=True,
        PRICING_URL=pricing_upstream.url,
    )
    client = signed_in(app)[0]
    key = {"Idempotency-Key": "switch-1"}
    assert client.post(ITEMS, json={"name": "Redis"}, headers=key).status_code == 201
    assert client.get(ITEMS).status_code == 200
    assert client.get(f"{ITEMS}/1/price").status_code == 200
    kinds = {key.split(":")[1] for key in redis_target.stored_keys()}
    assert {"limits", "idempotency", "cache", "breaker"} <= kinds
    ready = client.get("/health/ready").json
    assert ready is not None
    assert ready["checks"]["redis"]["status"] == "pass"


def test_cached_values_are_json_not_pickle(
    make_app: AppFactory, redis_target: RedisTarget
) -> None:
    client = signed_in(redis_app(make_app, redis_target))[0]
    client.post(ITEMS, json={"name": "Plain"})
    client.get(ITEMS)
    cached = [
        redis_target.get(key)
        for key in redis_target.stored_keys()
        if key.startswith(f"{redis_target.prefix}:cache:")
    ]
    assert cached
    for value in cached:
        assert value is not None
        json.loads(value)  # a pickle would not parse


@dataclass(frozen=True)
class Fallback:
    """Where a limit is counted, and how its fallback to memory shows."""

    path: str
    settings: dict[str, Any]
    warning: str
    recheck: float


@pytest.mark.parametrize(
    "case",
    [
        # A policy's counter: the shared gate warns, and retries after 1 s.
        Fallback(
            ITEMS,
            {"RESILIENCE_POLICIES": {"read": {"limit": "3 per minute"}}},
            "Redis is unreachable",
            FIRST_COOL_DOWN + 0.1,
        ),
        # No policy: the default limit, counted the same way.
        Fallback(
            DOCUMENT,
            {"RATELIMIT_DEFAULT": "3/minute"},
            "Redis is unreachable",
            FIRST_COOL_DOWN + 0.1,
        ),
    ],
    ids=["policy", "default"],
)
def test_rate_limits_fall_back_to_memory_and_come_back(
    make_app: AppFactory,
    redis_target: RedisTarget,
    caplog: pytest.LogCaptureFixture,
    case: Fallback,
) -> None:
    path = case.path
    app = redis_app(make_app, redis_target, RATE_LIMITS_ENABLED=True, **case.settings)
    client = app.test_client()
    outside_a_window_edge()
    assert client.get(path).headers["RateLimit-Remaining"] == "2"
    redis_target.cut()
    with caplog.at_level(logging.WARNING):
        during = [client.get(path).status_code for _ in range(5)]
    # Served, and limited in memory meanwhile: no error, and 429s again.
    assert during[0] == 200
    assert set(during) == {200, 429}
    assert caplog.text.count(case.warning) == 1
    redis_target.restore()
    time.sleep(case.recheck)
    # Back on Redis, where one request of the three was counted.
    assert client.get(path).headers["RateLimit-Remaining"] == "1"


def test_every_worker_counts_every_hit_in_redis(
    make_app: AppFactory, redis_target: RedisTarget
) -> None:
    # A limit far from being reached, where workers once took hits in leases.
    settings: dict[str, Any] = {
        "RATE_LIMITS_ENABLED": True,
        "RESILIENCE_POLICIES": {"read": {"limit": "6400 per minute"}},
    }
    first = redis_app(make_app, redis_target, **settings).test_client()
    second = redis_app(make_app, redis_target, **settings).test_client()
    outside_a_window_edge()
    remaining = [
        int(worker.get(ITEMS).headers["RateLimit-Remaining"])
        for _ in range(10)
        for worker in (first, second)
    ]
    # What each answer announces is what is left, whichever worker answers.
    assert remaining == list(range(6399, 6379, -1))
    (key,) = [key for key in redis_target.stored_keys() if ":limits:" in key]
    assert redis_target.get(key) == b"20"


def test_a_request_counts_in_all_its_windows_in_one_round_trip(
    make_app: AppFactory, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = redis_app(
        make_app,
        redis_target,
        RATE_LIMITS_ENABLED=True,
        RESILIENCE_POLICIES={"read": {"limit": "5 per minute; 7 per hour"}},
    )
    store = redis_store(app)
    assert store is not None
    sent: list[str] = []
    execute: Callable[..., Any] = store.client.execute_command

    def counting(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]).upper())
        return execute(*args, **options)

    monkeypatch.setattr(store.client, "execute_command", counting)
    # The limiter's clock stops half a minute into the middle of this hour:
    # neither window may end mid-test, however slow the machine.
    now = time.time()
    stopped = now - now % 3600 + 1830.5
    monkeypatch.setattr(
        rate_limits,
        "time",
        SimpleNamespace(time=lambda: stopped, monotonic=time.monotonic),
    )
    client = app.test_client()
    client.get(ITEMS)  # the first call also loads the script into Redis
    sent.clear()
    answer = client.get(ITEMS)
    assert answer.headers["RateLimit-Policy"] == "5;w=60"
    assert [command for command in sent if command.startswith("EVAL")] == ["EVALSHA"]
    limits = [key for key in redis_target.stored_keys() if ":limits:" in key]
    assert [redis_target.get(key) for key in limits] == [b"2", b"2"]
    for _ in range(5):
        client.get(ITEMS)
    # The hour's window is the tighter one now: 7 hits, 0 left.
    refused = client.get(ITEMS)
    assert refused.status_code == 429
    assert refused.headers["RateLimit-Policy"] == "7;w=3600"


def test_sign_in_and_sign_up_fail_closed_while_redis_is_away(
    make_app: AppFactory,
    redis_target: RedisTarget,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = redis_app(make_app, redis_target, RATE_LIMITS_ENABLED=True)
    client = app.test_client()
    sign_in = {"email": "someone@example.com", "password": "a wrong password"}
    assert client.post(f"{AUTH}/token", json=sign_in).status_code == 401
    redis_target.cut()
    with caplog.at_level(logging.WARNING):
        # Each worker counting on its own would multiply the limit by the
        # workers: refused until Redis answers, where the count is shared.
        for _ in range(3):
            refused = client.post(f"{AUTH}/token", json=sign_in)
            assert problem(refused, 503)["title"] == "Service Unavailable"
            assert refused.headers["Retry-After"] == "5"
        sign_up = {"email": "new@example.com", "password": PASSWORD}
        problem(client.post(f"{AUTH}/register", json=sign_up), 503)
        # Reads count in process memory meanwhile.
        assert client.get(ITEMS).status_code == 200
    (warning,) = [r.message for r in caplog.records if "Redis is" in r.message]
    closed = {
        name
        for name, policy in app.config["RESILIENCE_POLICIES"].items()
        if policy.get("fail_closed")
    }
    assert {"login", "register"} <= closed
    assert warning.endswith(
        f"; meanwhile the {listed(closed)} rate limits answer 503 (the others "
        "count in each process)"
    )
    redis_target.restore()
    time.sleep(FIRST_COOL_DOWN + 0.1)
    assert client.post(f"{AUTH}/token", json=sign_in).status_code == 401


def test_breaker_state_is_shared_through_redis(
    make_app: AppFactory, redis_target: RedisTarget, pricing_upstream: FakeUpstream
) -> None:
    settings: dict[str, Any] = {
        "PRICING_URL": pricing_upstream.url,
        "CIRCUIT_BREAKERS": {"pricing": {"fail_max": 2, "reset_timeout": 30}},
        "RESILIENCE_POLICIES": {"pricing": {"breaker": "pricing"}},
    }
    first = redis_app(make_app, redis_target, **settings)
    with first.app_context():
        db.session.add(Item(name="Priced"))
        db.session.commit()
    pricing_upstream.default = Reply(status=500)
    for _ in range(2):
        assert first.test_client().get(f"{ITEMS}/1/price").status_code == 503
    calls = pricing_upstream.calls
    # Another worker: its own app and breaker objects, the same Redis.
    second = redis_app(make_app, redis_target, **settings)
    refused = second.test_client().get(f"{ITEMS}/1/price")
    assert refused.status_code == 503
    assert 1 <= int(refused.headers["Retry-After"]) <= 30
    assert pricing_upstream.calls == calls
    with second.app_context():
        assert breakers_of()["pricing"].current_state == "open"


def test_redis_down_at_boot_does_not_stop_the_app(
    make_app: AppFactory, redis_target: RedisTarget, pricing_upstream: FakeUpstream
) -> None:
    redis_target.cut()
    app = redis_app(
        make_app,
        redis_target,
        PRICING_URL=pricing_upstream.url,
        RATE_LIMITS_ENABLED=True,
    )
    client = signed_in(app)[0]
    assert client.post(ITEMS, json={"name": "Booted"}).status_code == 201
    with app.app_context():
        db.session.add(Item(name="Priced"))
        db.session.commit()
    assert client.get(f"{ITEMS}/2/price").status_code == 200
    # Degraded, not unready: the service serves without Redis (above).
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json is not None
    assert ready.json["checks"]["redis"]["status"] == "warn"
    assert client.get("/health/live").status_code == 200


def test_idempotency_keys_are_shared_through_redis(
    make_app: AppFactory, redis_target: RedisTarget
) -> None:
    first, second = signed_in(
        redis_app(make_app, redis_target), redis_app(make_app, redis_target)
    )
    key = {"Idempotency-Key": "shared-1"}
    created = first.post(ITEMS, json={"name": "Once"}, headers=key)
    replayed = second.post(ITEMS, json={"name": "Once"}, headers=key)
    assert created.status_code == replayed.status_code == 201
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.get_data() == created.get_data()


def test_idempotency_keys_fail_closed_while_redis_is_away(
    make_app: AppFactory, redis_target: RedisTarget
) -> None:
    app = redis_app(make_app, redis_target)
    client = signed_in(app)[0]
    redis_target.cut()
    key = {"Idempotency-Key": "offline-1"}
    # Every worker would keep keys of its own: refuse rather than run twice.
    refused = client.post(ITEMS, json={"name": "x"}, headers=key)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    # Requests without a key are served as always.
    assert client.post(ITEMS, json={"name": "y"}).status_code == 201
    redis_target.restore()
    time.sleep(FIRST_COOL_DOWN + 0.1)
    assert client.post(ITEMS, json={"name": "x"}, headers=key).status_code == 201
    again = client.post(ITEMS, json={"name": "x"}, headers=key)
    assert (again.status_code, again.headers["Idempotent-Replayed"]) == (201, "true")
    with app.app_context():
        assert db.session.query(Item).count() == 2


def test_a_cache_outage_is_a_miss_not_an_error(
    make_app: AppFactory, redis_target: RedisTarget
) -> None:
    app = redis_app(make_app, redis_target)
    client = signed_in(app)[0]
    client.post(ITEMS, json={"name": "Cached"})
    assert client.get(ITEMS).json["total"] == 1  # type: ignore[index]
    redis_target.cut()
    for _ in range(3):
        response = client.get(ITEMS)
        assert response.status_code == 200
        assert response.json["total"] == 1  # type: ignore[index]
    assert client.post(ITEMS, json={"name": "More"}).status_code == 201
    assert client.get(ITEMS).json["total"] == 2  # type: ignore[index]


def test_writes_missed_during_an_outage_leave_nothing_stale(
    make_app: AppFactory, redis_target: RedisTarget
) -> None:
    app = redis_app(make_app, redis_target)
    client = signed_in(app)[0]
    client.post(ITEMS, json={"name": "Cached"})
    assert client.get(ITEMS).json["total"] == 1  # type: ignore[index]
    assert redis_target.stored_keys(), "the page is cached in Redis"
    redis_target.cut()
    # The write cannot forget the cached page: Redis is away.
    assert client.post(ITEMS, json={"name": "Missed"}).status_code == 201
    redis_target.restore()
    time.sleep(FIRST_COOL_DOWN + 0.1)
    assert client.get(ITEMS).json["total"] == 2  # type: ignore[index]


def test_the_cache_is_shared_and_forgotten_everywhere(
    make_app: AppFactory, redis_target: RedisTarget, tmp_path: Path
) -> None:
    # Two workers: one database, one Redis.
    shared = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'shared.db'}"}
    first, second = signed_in(
        redis_app(make_app, redis_target, **shared),
        redis_app(make_app, redis_target, **shared),
    )
    first.post(ITEMS, json={"name": "One"})
    assert first.get(ITEMS).json["total"] == 1  # type: ignore[index]
    # A write in one worker forgets the page in all of them.
    second.post(ITEMS, json={"name": "Two"})
    assert first.get(ITEMS).json["total"] == 2  # type: ignore[index]


def test_the_gate_backs_off_and_logs_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = RedisGate()
    assert gate.is_open()
    with caplog.at_level(logging.WARNING):
        gate.failed(ConnectionError("down"))
        assert not gate.is_open()
        gate.failed(ConnectionError("still down"))
        gate.succeeded()
        gate.succeeded()
    assert gate.is_open()
    messages = [record.message for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("Redis is unreachable (ConnectionError)")
    assert messages[1] == "Redis answers again: using it again"


def test_the_gate_retries_after_its_cool_down(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    gate = RedisGate()
    gate.failed(ConnectionError())
    assert not gate.is_open()
    now[0] += FIRST_COOL_DOWN
    assert gate.is_open()
    gate.failed(ConnectionError())
    now[0] += FIRST_COOL_DOWN
    assert not gate.is_open(), "the second cool-down is twice as long"


def test_without_redis_url_there_is_no_store(make_app: AppFactory) -> None:
    assert redis_store(make_app(REDIS_URL=None)) is None
