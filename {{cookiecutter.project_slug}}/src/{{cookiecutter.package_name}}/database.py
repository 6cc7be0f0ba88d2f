"""The database as a dependency that can fail.

While the database is down, hung, frozen, read-only (a failover in progress) or
refusing connections, requests that need it get a 503 problem document with
Retry-After instead of a 500 or an endless wait. The server log gets one line
per such request and one traceback per outage (per worker process): see
`Outage` for when an outage ends, and `Watchdog` for how a PostgreSQL server
that stops answering is noticed.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import psycopg
from flask import Flask, Response, current_app, request
from psycopg import pq
from sqlalchemy import Connection, Engine, event, exc
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.pool import ConnectionPoolEntry

from .errors import handle_unexpected_error, problem_response, shortened
from .extensions import db

EXTENSION_KEY = "database_outage"
# SQLSTATEs that mean "not now" rather than "never": the server is read-only
# (a standby, or a primary being demoted) or is shutting down or starting up.
UNAVAILABLE_SQLSTATES = frozenset({"25006", "57P01", "57P02", "57P03", "53300"})
# Seconds without a failure of a kind that end an outage of that kind.
QUIET_PERIOD = 60.0
# Seconds a statement may outlive statement_timeout before the client gives up:
# room for the server's own cancellation to arrive first when it is alive.
STATEMENT_MARGIN = 1.0
# Seconds between the watchdog's looks at its deadlines (how late it may act).
WATCHDOG_TICK = 0.1
# What migrations/env.py sends to lift the statement cap for long migrations.
LIFTS_STATEMENT_TIMEOUT = re.compile(
    r"SET\s+(?:SESSION\s+|LOCAL\s+)?statement_timeout\s*(?:=|TO)\s*'?0'?\s*;?\s*$",
    re.IGNORECASE,
)
# Set in a new connection's pool entry: its first checkout skips the ping, as
# pool_pre_ping's did, since it has just answered.
FRESH = "database_fresh"


class Outage:
    """Failures of the database by kind, shared by a process's threads.

    An outage is a run of failures of one kind (exception class and SQLSTATE)
    without a gap of `quiet` seconds: the first failure of a kind logs its
    traceback; later ones log one line until `quiet` seconds pass without that
    failure. A connection that succeeds does not end an outage, since a
    read-only server accepts connections (and reads) while refusing writes.
    """

    def __init__(
        self, quiet: float = QUIET_PERIOD, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self.quiet = quiet
        self.clock = clock
        self._last: dict[tuple[type[Exception], str | None], float] = {}

    def begin(self, error: Exception) -> bool:
        """Record a failure; True when it starts a new outage of its kind."""
        sqlstate = getattr(getattr(error, "orig", None), "sqlstate", None)
        kind = (type(error), sqlstate)
        now = self.clock()
        with self._lock:
            last = self._last.get(kind)
            self._last[kind] = now
        return last is None or now - last >= self.quiet


class Watched(Protocol):
    """What the watchdog uses of a psycopg connection."""

    @property
    def pgconn(self) -> WatchedPGconn: ...


class WatchedPGconn(Protocol):
    """What the watchdog uses of a libpq connection."""

    @property
    def socket(self) -> int: ...

    @property
    def transaction_status(self) -> int: ...


class Watchdog:
    """Ends waits on PostgreSQL that outlive their deadline, in one daemon thread.

    statement_timeout, keepalives and tcp_user_timeout cannot end a wait on a
    server that is alive at the TCP level but never answers (frozen, or behind
    a stuck proxy): the server never saw the query, and the peer ACKs. So each
    wait registers a deadline here: a dict entry under a lock, about a
    microsecond, where a timer or thread per statement would cost far more.
    Every `tick` seconds this thread shuts down the socket of each connection
    whose deadline passed while libpq still waits for an answer (transaction
    status ACTIVE, as psycopg itself checks on Ctrl-C): libpq's read fails,
    psycopg raises OperationalError and SQLAlchemy invalidates the connection,
    so the request gets a 503. It shuts down a duplicate of the descriptor and
    never closes libpq's own, whose number could then be reused under libpq.

    A deadline whose wait ended without clearing it is dropped unused, as the
    connection is no longer ACTIVE; the lock keeps a connection from starting
    a new wait while it is being looked at. One process-wide instance serves
    every engine, and a forked worker starts its own.
    """

    _lock: threading.Lock
    _deadlines: dict[Watched, float]
    _exempt: weakref.WeakSet[Watched]
    _stop: threading.Event
    _thread: threading.Thread | None

    def __init__(self, tick: float = WATCHDOG_TICK) -> None:
        self._tick = tick
        self.forget()

    def arm(self, connection: Watched, seconds: float) -> None:
        """Give `connection`'s wait that starts now `seconds` to end."""
        deadline = time.monotonic() + seconds
        with self._lock:
            self._deadlines[connection] = deadline
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="database-watchdog", daemon=True
                )
                self._thread.start()

    def disarm(self, connection: Watched) -> None:
        """`connection`'s wait ended."""
        with self._lock:
            self._deadlines.pop(connection, None)

    def armed(self, connection: Watched) -> bool:
        """Whether `connection` has a deadline registered."""
        with self._lock:
            return connection in self._deadlines

    def exempt(self, connection: Watched) -> None:
        """Never interrupt `connection`: its statements may run without limit."""
        self._exempt.add(connection)

    def forget(self) -> None:
        """Start empty (again in a forked child, which has no watchdog thread)."""
        self._lock = threading.Lock()
        self._deadlines = {}
        self._exempt = weakref.WeakSet()
        self._stop = threading.Event()
        self._thread = None

    def close(self) -> None:
        """Stop the thread (the process-wide watchdog never needs to)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            now = time.monotonic()
            # Under the lock, so no new wait on these connections starts meanwhile.
            with self._lock:
                for connection, deadline in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[connection]
                        if connection not in self._exempt:
                            interrupt(connection)


def interrupt(connection: Watched) -> bool:
    """Shut down `connection`'s socket if libpq still waits on it; True if so."""
    try:
        if connection.pgconn.transaction_status != pq.TransactionStatus.ACTIVE:
            return False
        descriptor = connection.pgconn.socket
        # (The family is only a label here: shutdown() works on any socket.)
        with socket.fromfd(descriptor, socket.AF_INET, socket.SOCK_STREAM) as twin:
            # The connection may have closed (and its descriptor number been
            # reused) before the dup: only a still-open one had it throughout.
            if connection.pgconn.socket != descriptor:
                return False
            twin.shutdown(socket.SHUT_RDWR)
    except (psycopg.Error, OSError):
        return False  # closed meanwhile: nothing left to interrupt
    return True


WATCHDOG = Watchdog()
os.register_at_fork(after_in_child=WATCHDOG.forget)


def watch(engine: Engine, statement_seconds: float, ping_seconds: float) -> None:
    """Bound every statement, commit, rollback and checkout ping of `engine`.

    Statements, commits and rollbacks get `statement_seconds` (a little more
    than the server's statement_timeout, so that a live server cancels first);
    the checkout ping gets `ping_seconds`. The ping is the pessimistic
    disconnect recipe, replacing pool_pre_ping (which waits without limit): a
    failed ping makes the pool drop its connections and connect anew. A
    connection that runs ``SET statement_timeout = 0`` (migrations/env.py
    does) has lifted the server's cap, so it loses its deadlines too, for the
    rest of its life.
    """

    def before_execute(
        _conn: Connection, cursor: psycopg.Cursor[Any], statement: str, *_: Any
    ) -> None:
        if statement.startswith(("SET", "set")) and LIFTS_STATEMENT_TIMEOUT.match(
            statement
        ):
            WATCHDOG.exempt(cursor.connection)
        WATCHDOG.arm(cursor.connection, statement_seconds)

    def after_execute(_conn: Connection, cursor: psycopg.Cursor[Any], *_: Any) -> None:
        WATCHDOG.disarm(cursor.connection)

    def failed(context: ExceptionContext) -> None:
        # No cursor (not even the attribute) when connecting failed.
        cursor = getattr(context, "cursor", None)
        if (connection := getattr(cursor, "connection", None)) is not None:
            WATCHDOG.disarm(connection)

    def end_transaction(conn: Connection) -> None:
        if not (conn.closed or conn.invalidated):
            connection = conn.connection.driver_connection
            if connection is not None:
                WATCHDOG.arm(connection, statement_seconds)

    def reset(
        connection: psycopg.Connection[Any] | None,
        _record: ConnectionPoolEntry,
        _state: Any,
    ) -> None:
        if connection is not None:
            WATCHDOG.arm(connection, statement_seconds)

    def checkin(
        connection: psycopg.Connection[Any] | None, _record: ConnectionPoolEntry
    ) -> None:
        if connection is not None:
            WATCHDOG.disarm(connection)

    def connected(_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[FRESH] = True

    def ping(
        connection: psycopg.Connection[Any], record: ConnectionPoolEntry, _proxy: Any
    ) -> None:
        if record.info.pop(FRESH, False):
            return  # just connected: it answered moments ago
        WATCHDOG.arm(connection, ping_seconds)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except psycopg.Error as error:
            # The pool retries on a new connection; the others are as suspect.
            raise exc.InvalidatePoolError from error
        finally:
            WATCHDOG.disarm(connection)

    event.listen(engine, "before_cursor_execute", before_execute)
    event.listen(engine, "after_cursor_execute", after_execute)
    event.listen(engine, "handle_error", failed)
    event.listen(engine, "commit", end_transaction)
    event.listen(engine, "rollback", end_transaction)
    event.listen(engine, "reset", reset)
    event.listen(engine, "checkin", checkin)
    event.listen(engine, "connect", connected)
    event.listen(engine, "checkout", ping)


def is_unavailable(error: Exception) -> bool:
    """Whether `error` says the database cannot serve now (as opposed to a bug)."""
    if isinstance(
        error,
        exc.OperationalError
        | exc.InterfaceError
        | exc.DisconnectionError
        | exc.TimeoutError,
    ):
        return True
    if isinstance(error, exc.DBAPIError):
        return error.connection_invalidated or (
            getattr(error.orig, "sqlstate", None) in UNAVAILABLE_SQLSTATES
        )
    return False


def handle_database_error(error: exc.SQLAlchemyError) -> Response:
    """503 when the database is unavailable; any other database error is a bug."""
    if not is_unavailable(error):
        return handle_unexpected_error(error)
    outage: Outage = current_app.extensions[EXTENSION_KEY]
    if outage.begin(error):
        current_app.logger.error("The database is unavailable", exc_info=error)
    else:
        current_app.logger.warning(
            "database unavailable on %s %r (%s)",
            request.method,
            shortened(request.path),
            type(error).__name__,
        )
    return problem_response(503, "The database is unavailable; try again shortly.")


def close_session(_error: BaseException | None) -> None:
    """End the request's session without letting a broken connection fail it.

    A connection that dies after the view committed would make the rollback in
    the session's cleanup raise, after the answer was made: the client would
    get a bare 500 for a write that was stored.
    """
    try:
        db.session.remove()
    except exc.SQLAlchemyError as error:
        current_app.logger.warning(
            "closing the database session failed (%s)", type(error).__name__
        )
        db.session.registry.clear()


def init_app(app: Flask) -> None:
    """Install the 503 handler, safe session cleanup and PostgreSQL deadlines."""
    app.extensions[EXTENSION_KEY] = Outage()
    app.register_error_handler(exc.SQLAlchemyError, handle_database_error)
    # Registered after Flask-SQLAlchemy's own, so it runs first.
    app.teardown_appcontext(close_session)
    with app.app_context():
        for engine in db.engines.values():
            if engine.dialect.driver == "psycopg":
                watch(
                    engine,
                    app.config["DATABASE_STATEMENT_TIMEOUT"] + STATEMENT_MARGIN,
                    app.config["DATABASE_CONNECT_TIMEOUT"],
                )
