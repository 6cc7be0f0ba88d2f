"""In-memory SQLite under threads: its one connection, one thread at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, exc, text
from werkzeug.test import TestResponse

from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.pools import SerialStaticPool

from conftest import AppFactory, problem, signed_in

ITEMS = "/api/v1/items"
THREADS = 8
ROUNDS = 20


EngineFactory = Callable[..., Engine]


@pytest.fixture
def memory_engine() -> Iterator[EngineFactory]:
    """Make engines of in-memory SQLite with the pool; dispose of them after."""
    engines: list[Engine] = []

    def factory(**options: Any) -> Engine:
        engine = create_engine(
            "sqlite://",
            poolclass=SerialStaticPool,
            connect_args={"check_same_thread": False},
            **options,
        )
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        engine.dispose()


def json_of(response: TestResponse) -> dict[str, Any]:
    body = response.json
    assert isinstance(body, dict), response.get_data(as_text=True)
    return body


def in_thread(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_apps_lend_an_in_memory_database_to_one_thread_at_a_time(
    make_app: AppFactory, tmp_path: Path
) -> None:
    for config_name in ("testing", "development"):
        app = make_app(config_name, SQLALCHEMY_DATABASE_URI="sqlite://")
        with app.app_context():
            assert isinstance(db.engine.pool, SerialStaticPool)
    # A file gets SQLAlchemy's own pool: a connection per thread.
    file_engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    assert not isinstance(file_engine.pool, SerialStaticPool)
    file_engine.dispose()


def test_requests_in_threads_read_and_write_one_in_memory_database(
    make_app: AppFactory,
) -> None:
    # Every thread of a threaded server used the one connection at once before:
    # on Python 3.12 and later, within a few rounds, requests got another
    # request's row, InterfaceError ("bad parameter or other API misuse", a
    # 503 here) or the process died of a segmentation fault.
    app = make_app(
        SQLALCHEMY_DATABASE_URI="sqlite://",
        MAX_IN_FLIGHT=64,  # no load shedding: every request must reach the view
        tables=True,
    )
    clients = signed_in(app)
    ids = [
        json_of(clients[0].post(ITEMS, json={"name": f"item-{n}"}))["id"]
        for n in range(THREADS)
    ]
    start = threading.Barrier(THREADS, timeout=10)
    api_key = clients[0].environ_base["HTTP_X_API_KEY"]

    def work(n: int) -> list[tuple[int, str]]:
        client = app.test_client()
        client.environ_base["HTTP_X_API_KEY"] = api_key
        start.wait()
        seen = []
        for round_ in range(ROUNDS):
            read = client.get(f"{ITEMS}/{ids[n]}")
            seen.append((read.status_code, json_of(read).get("name", "")))
            written = client.patch(f"{ITEMS}/{ids[n]}", json={"quantity": round_ + 1})
            seen.append((written.status_code, json_of(written).get("name", "")))
        return seen

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(work, range(THREADS), timeout=120))
    for n, seen in enumerate(results):
        assert seen == [(200, f"item-{n}")] * (2 * ROUNDS)
    for n in range(THREADS):
        assert json_of(clients[0].get(f"{ITEMS}/{ids[n]}"))["quantity"] == ROUNDS


def test_a_checkout_waits_until_the_connection_is_returned(
    memory_engine: EngineFactory,
) -> None:
    engine = memory_engine()
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (x INTEGER)"))
    got = threading.Event()

    def take() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT x FROM t")).all()
            got.set()

    held = engine.connect()
    held.execute(text("INSERT INTO t VALUES (1)"))
    waiter = in_thread(take)
    assert not got.wait(0.5)
    held.commit()
    held.close()
    assert got.wait(5)
    waiter.join(5)


def test_the_holding_thread_shares_the_connection(memory_engine: EngineFactory) -> None:
    engine = memory_engine(pool_timeout=0.2)
    with engine.connect() as outer:
        outer.execute(text("CREATE TABLE t (x INTEGER)"))
        with engine.connect() as inner:
            # The same database: it lives in the one connection.
            assert inner.execute(text("SELECT count(*) FROM t")).scalar_one() == 0


def test_a_thread_that_waits_past_the_timeout_gets_a_pool_timeout(
    memory_engine: EngineFactory,
) -> None:
    engine = memory_engine(pool_timeout=0.2)
    assert isinstance(engine.pool, SerialStaticPool)
    assert engine.pool.timeout == 0.2
    errors: list[Exception] = []

    def take() -> None:
        try:
            engine.connect()
        except exc.TimeoutError as error:
            errors.append(error)

    with engine.connect():
        in_thread(take).join(5)
    assert len(errors) == 1
    assert "in use by another thread for 0.2 s" in str(errors[0])
    # Returned: another thread gets it at once.
    in_thread(lambda: engine.connect().close()).join(5)
    assert len(errors) == 1


def test_a_request_kept_waiting_for_the_database_gets_a_503(
    make_app: AppFactory,
) -> None:
    app = make_app(
        SQLALCHEMY_DATABASE_URI="sqlite://",
        SQLALCHEMY_ENGINE_OPTIONS={"pool_timeout": 1},
        tables=True,
    )
    (client,) = signed_in(app)
    with app.app_context():
        held = db.engine.connect()
    try:
        responses: list[TestResponse] = []
        in_thread(lambda: responses.append(client.get(f"{ITEMS}/1"))).join(10)
        assert problem(responses[0], 503)["detail"] == (
            "The database is unavailable; try again shortly."
        )
    finally:
        held.close()
    assert client.get(f"{ITEMS}/1").status_code == 404


def test_a_recreated_pool_keeps_its_timeout(memory_engine: EngineFactory) -> None:
    engine = memory_engine(pool_timeout=1.5)
    engine.dispose()
    assert isinstance(engine.pool, SerialStaticPool)
    assert engine.pool.timeout == 1.5
