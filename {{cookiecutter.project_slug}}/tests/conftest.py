"""Fixtures shared by the test suite: app, client, runner and the database."""

from __future__ import annotations

import functools
import os
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from flask_migrate import downgrade, upgrade
from sqlalchemy import text

from {{ cookiecutter.package_name }} import create_app
from {{ cookiecutter.package_name }}.auth import users
from {{ cookiecutter.package_name }}.auth.keys import process_key
from {{ cookiecutter.package_name }}.errors import PROBLEM_MEDIA_TYPE
from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.models import ApiKey, User
from {{ cookiecutter.package_name }}.models.base import utcnow
from {{ cookiecutter.package_name }}.resilience import store

PROJECT = Path(__file__).resolve().parent.parent
# What the fake pricing service answers unless told otherwise.
GOOD_PRICE = b'{"amount": "12.50", "currency": "EUR"}'
MIGRATIONS = PROJECT / "migrations"

AppFactory = Callable[..., Flask]


@functools.cache
def signing_key_pem() -> str:
    """A PEM RSA key for JWT_PRIVATE_KEY, as production is given one."""
    return (
        process_key()
        .private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


# What production needs besides SECRET_KEY, DATABASE_URL and the signing key.
{%- if cookiecutter.use_celery == "yes" %}
PRODUCTION_EXTRAS: dict[str, str] = {
    # A Celery broker: one nobody listens on, so a task sent fails at once
    # (and is logged) and no Redis of the machine collects stray tasks.
    "CELERY_BROKER_URL": "redis://127.0.0.1:9/0",
    # Production refuses the console backend; the tests send no mail from it.
    "MAIL_BACKEND": "smtp",
    "MAIL_HOST": "127.0.0.1",
    "MAIL_PORT": "9",
}
{%- else %}
PRODUCTION_EXTRAS: dict[str, str] = {}
{%- endif %}


def production_settings(**extra: str) -> dict[str, str]:
    """An environment production starts with (a safe key, a database URL, the
    signing key and PRODUCTION_EXTRAS), with `extra` on top."""
    return {
        "SECRET_KEY": "k" * 8 + "3vQ9-xT_4mWz7Lr2Pb6Yc1Nd8Hs5Jf0Ga",
        "JWT_PRIVATE_KEY": signing_key_pem(),
        "DATABASE_URL": "postgresql://app:pw@db.internal:5432/app",
        **PRODUCTION_EXTRAS,
        **extra,
    }


# The password of every account the tests make (it passes the policy).
PASSWORD = "plum-ocelot-37-harbour"


@dataclass(frozen=True)
class Account:
    """A user the tests made, with an API key of theirs."""

    id: int
    email: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}


def add_account(
    app: Flask,
    email: str = "writer@example.com",
    *,
    roles: tuple[str, ...] = ("user",),
    scopes: tuple[str, ...] = ("read", "write"),
) -> Account:
    """A new account of `app` with PASSWORD, and an API key with `scopes`."""
    with app.app_context():
        user = users.create_user(email, PASSWORD, list(roles))
        _, plain = users.create_api_key(user, "tests", list(scopes))
        return Account(user.id, user.email, plain)


def signed_in(app: Flask, *others: Flask) -> list[FlaskClient]:
    """Clients of `app` and `others` sending one read-write account's API key.

    The apps stand for workers of one service: an app with a database of its
    own gets a copy of the account.
    """
    account = add_account(app)
    for other in others:
        with other.app_context():
            if users.find_user(account.email) is None:
                user = User(email=account.email, password_hash="-", roles=["user"])
                prefix = account.api_key.split("_")[1]
                db.session.add(user)
                db.session.flush()
                db.session.add(
                    ApiKey(
                        user_id=user.id,
                        name="tests",
                        prefix=prefix,
                        secret_hash=users.secret_hash(account.api_key),
                        scopes=["read", "write"],
                        user_uniquifier=user.fs_uniquifier,
                        expires_at=utcnow() + timedelta(days=1),
                    )
                )
                db.session.commit()
    clients = []
    for each in (app, *others):
        client = each.test_client()
        client.environ_base["HTTP_X_API_KEY"] = account.api_key
        clients.append(client)
    return clients


def needs_service(
    *, available: bool, reason: str
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark a test `services`, and skip it (saying `reason`) unless `available`."""

    def mark(test: Callable[..., None]) -> Callable[..., None]:
        skipped = pytest.mark.skipif(not available, reason=reason)(test)
        marked: Callable[..., None] = pytest.mark.services(skipped)
        return marked

    return mark


def wait_until(
    condition: Callable[[], bool], seconds: float = 5, what: str = "the condition"
) -> None:
    """Poll `condition` until it holds, failing after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {seconds} s waiting for {what}")
        time.sleep(0.01)


def outside_a_window_edge(window: int = 60, margin: float = 10) -> None:
    """Wait until a fixed window of `window` seconds and the minute (windows
    are aligned to the clock, so a minute ends at each hour's end) both have
    at least `margin` seconds left: never longer than `margin` and half a
    second, and only that close to an edge."""
    for length in sorted({window, 60}, reverse=True):
        into_window = time.time() % length
        if into_window > length - margin:
            time.sleep(length + 0.5 - into_window)


def problem(response: Any, status: int) -> dict[str, Any]:
    """The problem document of `response`, which must have `status`."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json
    assert body["status"] == status
    # Every problem names its request, as the response's header does; the
    # rest of the document is returned for the test to compare.
    assert body.pop("request_id") == response.headers["X-Request-ID"]
    return body


@pytest.fixture
def make_app() -> Iterator[AppFactory]:
    """Build apps like create_app(); their connections are closed afterwards.

    Testing apps use in-memory SQLite, or $TEST_DATABASE_URL when it is set.
    """
    apps: list[Flask] = []

    def factory(
        config_name: str | None = "testing", *, tables: bool = False, **overrides: Any
    ) -> Flask:
        """create_app(); with tables=True, the database gets fresh, empty tables
        (TEST_DATABASE_URL's database outlives each test)."""
        overrides.setdefault("MIGRATIONS_DIRECTORY", str(MIGRATIONS))
        app = create_app(config_name, **overrides)
        apps.append(app)
        if tables:
            with app.app_context():
                drop_everything()
                db.create_all()
        return app

    yield factory
    for app in apps:
        close_connections(app)


def close_connections(app: Flask) -> None:
    """End the app's sessions, close its database connections, and remove the
    keys it wrote to TEST_REDIS_URL's Redis (each test app has its own prefix)."""
    with app.app_context():
        db.session.remove()
        for engine in db.engines.values():
            engine.dispose()
    shared = store.redis_store(app)
    if shared is not None and shared.gate.is_open():
        try:
            for key in shared.client.scan_iter(f"{shared.prefix}*"):
                shared.client.delete(key)
        except redis.RedisError:
            pass  # a test that took Redis away; its relay is gone with it
        shared.pool.disconnect()


def drop_everything() -> None:
    db.session.remove()
    db.drop_all()
    with db.engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))


@pytest.fixture
def empty_app(make_app: AppFactory) -> Iterator[Flask]:
    """A testing app, in its app context, whose database has no tables at all."""
    app = make_app()
    with app.app_context():
        drop_everything()
        yield app
        drop_everything()


@pytest.fixture
def app(empty_app: Flask) -> Flask:
    """A testing app whose tables exist (made from the models) and are empty."""
    db.create_all()
    return empty_app


@pytest.fixture
def migrated_app(empty_app: Flask) -> Iterator[Flask]:
    """A testing app whose database the migrations built."""
    upgrade()
    yield empty_app
    # Requests may have shared the fixture's app context: end their transaction.
    db.session.remove()
    downgrade(revision="base")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A client signed in with a read-write API key (writes need one)."""
    return signed_in(app)[0]


@pytest.fixture
def anonymous(app: Flask) -> FlaskClient:
    """A client that sends no credentials."""
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def hung_server() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never answers.

    It stands for a database that is up at the TCP level but stuck (overloaded,
    paused, behind a broken proxy).
    """
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def hold_connections() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    holder = threading.Thread(target=hold_connections, daemon=True)
    holder.start()
    yield listener.getsockname()[1]
    stop.set()
    holder.join(timeout=5)
    for connection in accepted:
        connection.close()
    listener.close()


@dataclass
class Reply:
    """How the fake answers one call."""

    status: int = 200
    delay: float = 0.0
    body: bytes = GOOD_PRICE


class Server(ThreadingHTTPServer):
    # A longer listen queue than 5: a burst of connections beyond it is
    # dropped, and the clients' SYN retransmission (1 s) would time the test.
    request_queue_size = 64


class FakeUpstream:
    """A stand-in for another service on 127.0.0.1: it answers as told (`default`,
    or the `queue` of replies for the next calls) and counts its calls
    (thread-safely) and the most it served at once."""

    def __init__(self) -> None:
        self.default = Reply()
        self.queue: list[Reply] = []  # for the next calls, before `default`
        self.calls = 0
        self.peak = 0
        self.url = ""
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    def _enter(self) -> Reply:
        with self._lock:
            self.calls += 1
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)
            return self.queue.pop(0) if self.queue else self.default

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def start(self, port: int = 0) -> FakeUpstream:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                reply = fake._enter()
                try:
                    fake._stopping.wait(reply.delay)  # cut short at teardown
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except ConnectionError:
                    pass  # the client gave up waiting: what the test wanted
                finally:
                    fake._leave()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                """Quiet: the tests read the counters, not a log."""

        self._server = Server(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


@pytest.fixture
def pricing_upstream() -> Iterator[FakeUpstream]:
    """A pricing service on 127.0.0.1 answering GET /prices/<id> as told."""
    started = FakeUpstream().start()
    yield started
    started.stop()


class Relay:
    """A TCP relay on 127.0.0.1 to a real server, which a test can cut or freeze.

    - cut(): every open connection is closed and new ones are refused, which
      is what clients see when the server dies; restore() accepts again.
    - freeze(): nothing is forwarded either way, yet every socket stays open:
      a stopped server or a stuck proxy (the kernel still ACKs, no byte comes
      back); thaw() forwards again.

    Either way the real server, which other tests share, is left alone.
    close() stops every thread the relay started and closes every socket.
    """

    POLL = 0.02

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(self.POLL)
        self.port: int = self.listener.getsockname()[1]
        self.refusing = threading.Event()
        self.frozen = threading.Event()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def cut(self) -> None:
        self.refusing.set()
        with self.lock:
            for end in self.sockets:
                end.close()
            self.sockets.clear()

    def restore(self) -> None:
        self.refusing.clear()

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def close(self) -> None:
        """Stop every thread, then close every socket."""
        self.stopping.set()
        self.threads[0].join(timeout=5)  # the acceptor: no pump starts after it
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(timeout=5)
        assert not any(thread.is_alive() for thread in threads)
        self.listener.close()
        for end in self.sockets:
            end.close()

    def _spawn(self, target: Callable[..., None], *args: socket.socket) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self.lock:
            self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            if self.refusing.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(5)
            with self.lock:
                self.sockets += [client, server]
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while not self.stopping.is_set():
            try:
                readable, _, _ = select.select([source], [], [], self.POLL)
                # Checked after the wait: bytes sent once frozen stay unread.
                if not readable or self.frozen.is_set():
                    if self.frozen.is_set():
                        self.stopping.wait(self.POLL)
                    continue
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except (OSError, ValueError):
                return  # cut: the sockets were closed under the pump


@dataclass
class RedisTarget:
    """A Redis for one test: its URL, a key prefix of its own, and an off switch."""

    url: str
    prefix: str
    client: redis.Redis
    cut: Callable[[], None]
    restore: Callable[[], None]

    def stored_keys(self) -> list[str]:
        return sorted(key.decode() for key in self.client.scan_iter(f"{self.prefix}:*"))

    def get(self, key: str) -> bytes | None:
        value: bytes | None = self.client.get(key)  # type: ignore[assignment]
        return value

    def settings(self) -> dict[str, Any]:
        """create_app() overrides that put every shared store on this Redis."""
        return {
            "REDIS_URL": self.url,
            "REDIS_KEY_PREFIX": self.prefix,
            # Outages here are cut(), refused at once, so the short production
            # timeout is not under test; a loaded CI machine can hold the
            # relay's threads past it, which read as Redis being down.
            "REDIS_TIMEOUT": 5.0,
            "CACHE_TYPE": f"{store.__package__}.redis_cache.SafeRedisCache",
        }


@pytest.fixture
def redis_target(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisTarget]:
    """TEST_REDIS_URL's Redis, behind a relay the test can cut; without it, an
    in-process fakeredis (with Lua), whose connection switch does the same."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    real_url = os.environ.get("TEST_REDIS_URL")
    if real_url:
        parsed = redis.ConnectionPool.from_url(real_url).connection_kwargs
        relay = Relay(parsed.get("host", "127.0.0.1"), parsed.get("port", 6379))
        database = parsed.get("db", 0)
        client = redis.Redis.from_url(real_url)
        yield RedisTarget(
            f"redis://127.0.0.1:{relay.port}/{database}",
            prefix,
            client,
            relay.cut,
            relay.restore,
        )
        relay.close()
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()
        return
    server = fakeredis.FakeServer()

    def fake_pool(_url: str, _timeout: float) -> redis.ConnectionPool:
        return redis.ConnectionPool(
            connection_class=fakeredis.FakeRedisConnection, server=server
        )

    def cut() -> None:
        server.connected = False

    def restore() -> None:
        server.connected = True

    monkeypatch.setattr(store, "connection_pool", fake_pool)
    yield RedisTarget(
        "redis://fakeredis:6379/0",
        prefix,
        redis.Redis(connection_pool=fake_pool("", 0)),
        cut,
        restore,
    )
