"""An unavailable database is a 503 with Retry-After, logged once per outage."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg import pq
from sqlalchemy import event, exc
from sqlalchemy.engine import make_url

from {{ cookiecutter.package_name }}.database import (
    EXTENSION_KEY,
    QUIET_PERIOD,
    STATEMENT_MARGIN,
    WATCHDOG,
    Outage,
    Watchdog,
    is_unavailable,
)
from {{ cookiecutter.package_name }}.errors import PROBLEM_MEDIA_TYPE
from {{ cookiecutter.package_name }}.extensions import db

from conftest import AppFactory, Relay, add_account, needs_service, signed_in

ITEMS = "/api/v1/items"
POSTGRESQL_URL = os.environ.get("TEST_DATABASE_URL", "")
ON_POSTGRESQL = POSTGRESQL_URL.startswith("postgres")


needs_postgresql = needs_service(
    available=ON_POSTGRESQL,
    reason="needs TEST_DATABASE_URL=postgresql://...: only a PostgreSQL "
    "connection can freeze",
)


# DATABASE_STATEMENT_TIMEOUT and DATABASE_CONNECT_TIMEOUT of the frozen tests.
TIMEOUT = 1
# Seconds a request to a frozen database may take before its test fails.
WAIT_LIMIT = 10
# Seconds the relay's threads sleep between looks at their sockets and flags.
POLL = 0.02


@pytest.fixture
def file_app(make_app: AppFactory, tmp_path: Path) -> Flask:
    """An app whose SQLite file lives in a directory that does not exist yet."""
    return make_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/data/app.db")


def tracebacks(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for record in caplog.records if record.exc_info)


def test_requests_get_a_503_while_the_database_is_unavailable(
    file_app: Flask, tmp_path: Path
) -> None:
    client = file_app.test_client()
    # Checking an API key needs the database too.
    client.environ_base["HTTP_X_API_KEY"] = "ak_0123456789ab_not-a-real-secret"
    for method, path in [("get", ITEMS), ("post", ITEMS), ("get", f"{ITEMS}/1")]:
        response = getattr(client, method)(path, json={"name": "Widget"})
        assert response.status_code == 503, path
        assert response.mimetype == PROBLEM_MEDIA_TYPE
        assert response.headers["Retry-After"] == "5"
        body = response.get_data(as_text=True)
        assert str(tmp_path) not in body
        assert "OperationalError" not in body


def test_an_outage_logs_one_traceback_and_one_line_per_request(
    file_app: Flask,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = file_app.test_client()
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            assert client.get(ITEMS).status_code == 503
    assert tracebacks(caplog) == 1
    assert len(caplog.records) == 5
    assert "database unavailable on GET '/api/v1/items'" in caplog.records[-1].message

    # The database comes back: requests succeed and the outage is over.
    (tmp_path / "data").mkdir()
    with file_app.app_context():
        db.create_all()
    assert client.get(ITEMS).status_code == 200

    # It goes away again at once: the same outage (a flapping database).
    caplog.clear()
    (tmp_path / "data").rename(tmp_path / "moved")
    with file_app.app_context():
        db.engine.dispose()
    with caplog.at_level(logging.WARNING):
        assert client.get(ITEMS).status_code == 503
    assert tracebacks(caplog) == 0

    # After a quiet period, a failure is a new outage: one new traceback.
    later = time.monotonic() + QUIET_PERIOD
    monkeypatch.setattr(file_app.extensions[EXTENSION_KEY], "clock", lambda: later)
    with caplog.at_level(logging.WARNING):
        assert client.get(ITEMS).status_code == 503
        assert client.get(ITEMS).status_code == 503
    assert tracebacks(caplog) == 1


def test_a_read_only_database_is_unavailable_not_broken() -> None:
    # What PostgreSQL raises on a standby, or on a primary being demoted.
    read_only = exc.InternalError(
        "INSERT ...", {}, psycopg.errors.ReadOnlySqlTransaction("read-only")
    )
    assert is_unavailable(read_only)
    unique = exc.IntegrityError("INSERT ...", {}, psycopg.errors.UniqueViolation())
    assert not is_unavailable(unique)
    assert not is_unavailable(exc.InvalidRequestError("a bug"))


def test_other_database_errors_are_500s(app: Flask) -> None:
    @app.get("/bug")
    def bug() -> str:
        raise exc.InvalidRequestError("a bug")

    response = app.test_client().get("/bug")
    assert response.status_code == 500
    assert "Retry-After" not in response.headers


def test_a_connection_that_breaks_after_the_answer_does_not_fail_it(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # The request pushes its own app context, so the session is cleaned up at
    # its end, where the rollback of the read fails.
    app = make_app(tables=True)
    with app.app_context():
        engine = db.engine

    def broken(_connection: Any) -> None:
        raise exc.OperationalError("ROLLBACK", {}, Exception("connection lost"))

    client = app.test_client()
    event.listen(engine, "rollback", broken)
    try:
        with caplog.at_level(logging.WARNING):
            response = client.get(ITEMS)
    finally:
        event.remove(engine, "rollback", broken)
    assert response.status_code == 200
    assert "closing the database session failed (OperationalError)" in caplog.text
    assert client.get(ITEMS).status_code == 200


def test_a_hung_database_is_a_503_after_the_connect_timeout(
    make_app: AppFactory, hung_server: int
) -> None:
    app = make_app(
        SQLALCHEMY_DATABASE_URI=(
            f"postgresql+psycopg://app@127.0.0.1:{hung_server}/app?connect_timeout=1"
        )
    )
    response = app.test_client().get(ITEMS)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"


def test_an_outage_is_a_run_of_failures_of_one_kind() -> None:
    now = 0.0
    outage = Outage(quiet=60, clock=lambda: now)
    read_only = exc.InternalError(
        "INSERT ...", {}, psycopg.errors.ReadOnlySqlTransaction("read-only")
    )
    refused = exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("no"))
    assert outage.begin(read_only)
    now = 59.0
    assert not outage.begin(read_only)
    now = 118.0  # sustained: never 60 s without the failure
    assert not outage.begin(read_only)
    assert outage.begin(refused)  # another kind of failure: its own traceback
    now = 178.0
    assert outage.begin(read_only)  # 60 s without it: a new outage


class ReadOnlyError(sqlite3.InternalError):
    """What a standby answers to a write, raised by SQLite's DB-API."""

    sqlstate = "25006"


@pytest.fixture
def read_only_client(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> FlaskClient:
    """A signed-in client of an app whose database accepts connections and reads
    but refuses writes: really (default_transaction_read_only) on PostgreSQL,
    simulated on SQLite."""
    app = make_app(tables=True)
    account = add_account(app)
    if ON_POSTGRESQL:
        url = make_url(POSTGRESQL_URL).update_query_dict(
            {"options": "-c default_transaction_read_only=on"}
        )
        monkeypatch.setenv(
            "TEST_DATABASE_URL", url.render_as_string(hide_password=False)
        )
        app = make_app()
    else:
        with app.app_context():
            engine = db.engine

        def refuse_writes(_cursor: Any, statement: str, *_: Any) -> None:
            if statement.startswith(("INSERT", "UPDATE", "DELETE")):
                raise ReadOnlyError("cannot execute INSERT in a read-only transaction")

        event.listen(engine, "do_execute", refuse_writes)
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = account.api_key
    return client


def test_a_read_only_database_logs_one_traceback_while_it_lasts(
    read_only_client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = read_only_client
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            response = client.post(ITEMS, json={"name": "Nope"})
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "5"
            # Connections and reads succeed meanwhile: they do not end the outage.
            assert client.get(ITEMS).status_code == 200
    assert tracebacks(caplog) == 1
    assert len(caplog.records) == 3
    assert "(InternalError)" in caplog.records[-1].message


@dataclass(eq=False)  # compared (and hashed) by identity, as psycopg's are
class FakePGconn:
    """The libpq side of a connection, on a socket of a socketpair."""

    socket: int
    transaction_status: int = pq.TransactionStatus.ACTIVE


@dataclass(eq=False)
class FakeConnection:
    pgconn: FakePGconn


@pytest.fixture
def watchdog() -> Iterator[Watchdog]:
    """A watchdog of the test's own (the process's one never stops)."""
    dog = Watchdog(tick=POLL)
    yield dog
    dog.close()


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(5)
        right.settimeout(5)
        yield left, right


def test_the_watchdog_shuts_down_a_socket_that_waits_past_its_deadline(
    watchdog: Watchdog, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    left, _right = socket_pair
    connection = FakeConnection(FakePGconn(left.fileno()))
    started = time.monotonic()
    watchdog.arm(connection, 0.2)
    # What libpq's blocked read gets (the peer never answers): end of stream.
    assert left.recv(1) == b""
    assert 0.2 <= time.monotonic() - started < 1.0
    assert not watchdog.armed(connection)
    assert left.fileno() != -1  # shut down, not closed: libpq closes its own


def test_the_watchdog_leaves_waits_that_ended_alone(
    watchdog: Watchdog, socket_pair: tuple[socket.socket, socket.socket]
) -> None:
    left, right = socket_pair
    # A wait that ended without saying so, one that said so, one exempted.
    ended = FakeConnection(FakePGconn(left.fileno(), pq.TransactionStatus.INTRANS))
    cleared = FakeConnection(FakePGconn(left.fileno()))
    exempt = FakeConnection(FakePGconn(left.fileno()))
    watchdog.exempt(exempt)
    for connection in (ended, cleared, exempt):
        watchdog.arm(connection, 0.05)
    watchdog.disarm(cleared)
    give_up = time.monotonic() + 2
    while (watchdog.armed(ended) or watchdog.armed(exempt)) and (
        time.monotonic() < give_up
    ):
        time.sleep(POLL)
    assert not watchdog.armed(ended)
    assert not watchdog.armed(exempt)
    right.sendall(b"x")
    assert left.recv(1) == b"x"  # the socket still works


def test_sqlite_engines_are_not_watched(make_app: AppFactory) -> None:
    app = make_app(SQLALCHEMY_DATABASE_URI="sqlite://")
    with app.app_context():
        # database.py's own listeners (tracing, when selected, adds others).
        ours = "{{ cookiecutter.package_name }}.database"
        statements = db.engine.dispatch.before_cursor_execute
        checkouts = db.engine.pool.dispatch.checkout
        assert not [hook for hook in statements if hook.__module__ == ours]
        assert not [hook for hook in checkouts if hook.__module__ == ours]


@pytest.fixture
def relay() -> Iterator[Relay]:
    """A relay to TEST_DATABASE_URL's PostgreSQL server, which the test can freeze."""
    target = make_url(POSTGRESQL_URL)
    relay = Relay(target.host or "localhost", target.port or 5432)
    yield relay
    relay.close()


@pytest.fixture
def relayed_app(
    relay: Relay, make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> Flask:
    """An app (with its tables) on PostgreSQL through `relay`, with 1 s timeouts."""
    url = (
        make_url(POSTGRESQL_URL)
        .set(host="127.0.0.1", port=relay.port)
        .difference_update_query(["connect_timeout", "options"])
    )
    monkeypatch.setenv("TEST_DATABASE_URL", url.render_as_string(hide_password=False))
    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT", str(TIMEOUT))
    monkeypatch.setenv("DATABASE_CONNECT_TIMEOUT", str(TIMEOUT))
    return make_app(tables=True)


def timed_get(app: Flask, relay: Relay) -> tuple[int, str | None, float]:
    """GET the items: status, Retry-After and seconds taken, or fail after
    WAIT_LIMIT seconds (closing the relay ends the request's wait)."""
    answers: list[tuple[int, str | None]] = []

    def get() -> None:
        response = app.test_client().get(ITEMS)
        answers.append((response.status_code, response.headers.get("Retry-After")))

    started = time.monotonic()
    waiter = threading.Thread(target=get, daemon=True)
    waiter.start()
    waiter.join(timeout=WAIT_LIMIT)
    elapsed = time.monotonic() - started
    if waiter.is_alive():
        relay.close()
        waiter.join(timeout=5)
        pytest.fail(f"no answer in {WAIT_LIMIT} s")
    return (*answers[0], elapsed)


@needs_postgresql
def test_a_statement_sent_to_a_frozen_server_is_a_503_within_its_deadline(
    relayed_app: Flask, relay: Relay
) -> None:
    assert relayed_app.test_client().get(ITEMS).status_code == 200
    with relayed_app.app_context():
        engine = db.engine

    def freeze_before_the_query(
        _conn: Any, _cursor: Any, statement: str, *_: Any
    ) -> None:
        if "FROM items" in statement:
            relay.freeze()

    event.listen(engine, "before_cursor_execute", freeze_before_the_query)
    try:
        status, retry_after, elapsed = timed_get(relayed_app, relay)
    finally:
        event.remove(engine, "before_cursor_execute", freeze_before_the_query)
    assert (status, retry_after) == (503, "5")
    # Not before the deadline (the server's own cancel would have come first).
    bound = TIMEOUT + STATEMENT_MARGIN
    assert bound <= elapsed < bound + 1.5

    # The server answers again: so does the app, without a restart.
    relay.thaw()
    assert timed_get(relayed_app, relay)[0] == 200
    created = signed_in(relayed_app)[0].post(ITEMS, json={"name": "Thawed"})
    assert created.status_code == 201


@needs_postgresql
def test_a_freeze_while_the_connection_idles_in_the_pool_is_bounded_too(
    relayed_app: Flask, relay: Relay
) -> None:
    assert (
        timed_get(relayed_app, relay)[0] == 200
    )  # its connection now idles in the pool
    relay.freeze()
    status, retry_after, elapsed = timed_get(relayed_app, relay)
    assert (status, retry_after) == (503, "5")
    # The checkout ping gives up after DATABASE_CONNECT_TIMEOUT; the pool's
    # new connection then fails after libpq's connect_timeout (2 s at least).
    assert TIMEOUT <= elapsed < TIMEOUT + max(2, TIMEOUT) + 1.5

    relay.thaw()
    assert timed_get(relayed_app, relay)[0] == 200


@needs_postgresql
def test_statements_have_a_deadline_only_while_they_run(make_app: AppFactory) -> None:
    app = make_app(tables=True)
    with app.app_context():
        engine = db.engine
    running: list[tuple[Any, bool]] = []

    def record(_conn: Any, cursor: psycopg.Cursor[Any], *_: Any) -> None:
        running.append((cursor.connection, WATCHDOG.armed(cursor.connection)))

    event.listen(engine, "before_cursor_execute", record)
    try:
        client = signed_in(app)[0]
        assert client.post(ITEMS, json={"name": "Widget"}).status_code == 201
        assert client.get(ITEMS).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert running
    assert all(armed for _, armed in running)
    assert not any(WATCHDOG.armed(connection) for connection, _ in running)


@needs_postgresql
def test_the_server_cancels_first_and_a_lifted_cap_lifts_the_deadline(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT", str(TIMEOUT))
    url = make_url(POSTGRESQL_URL).difference_update_query(["options"])
    monkeypatch.setenv("TEST_DATABASE_URL", url.render_as_string(hide_password=False))
    app = make_app()
    longer = TIMEOUT + STATEMENT_MARGIN + 0.5
    with app.app_context(), db.engine.connect() as connection:
        with pytest.raises(exc.OperationalError) as cancelled:
            connection.exec_driver_sql(f"SELECT pg_sleep({longer})")
        # statement_timeout's cancel, on a connection that stays usable.
        assert isinstance(cancelled.value.orig, psycopg.errors.QueryCanceled)
        assert not cancelled.value.connection_invalidated
        connection.rollback()

        # What migrations/env.py does before a migration that may run long.
        connection.exec_driver_sql("SET statement_timeout = 0")
        started = time.monotonic()
        connection.exec_driver_sql(f"SELECT pg_sleep({longer})")
        assert time.monotonic() - started >= longer
