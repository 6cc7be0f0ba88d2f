"""The database as a dependency that can fail.

While the database is down, hung, read-only (a failover in progress) or
refusing connections, requests that need it get a 503 problem document with
Retry-After instead of a 500. The server log gets one line per such request and
one traceback per outage (per worker process): the outage ends when a
connection to the database succeeds again.
"""

from __future__ import annotations

import threading

from flask import Flask, Response, current_app, request
from sqlalchemy import event, exc

from .errors import handle_unexpected_error, problem_response
from .extensions import db

EXTENSION_KEY = "database_outage"
# SQLSTATEs that mean "not now" rather than "never": the server is read-only
# (a standby, or a primary being demoted) or is shutting down or starting up.
UNAVAILABLE_SQLSTATES = frozenset({"25006", "57P01", "57P02", "57P03", "53300"})


class Outage:
    """Whether the database is known to be failing, shared by a process's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ongoing = False

    def begin(self) -> bool:
        """Record a failure; True when it starts a new outage."""
        with self._lock:
            started = not self.ongoing
            self.ongoing = True
            return started

    def end(self) -> None:
        """Record a working connection."""
        if self.ongoing:
            with self._lock:
                self.ongoing = False


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
    if outage.begin():
        current_app.logger.error("The database is unavailable", exc_info=error)
    else:
        current_app.logger.warning(
            "database unavailable on %s %r (%s)",
            request.method,
            request.path,
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
    """Install the 503 handler, safe session cleanup and recovery detection."""
    outage = app.extensions[EXTENSION_KEY] = Outage()
    app.register_error_handler(exc.SQLAlchemyError, handle_database_error)
    # Registered after Flask-SQLAlchemy's own, so it runs first.
    app.teardown_appcontext(close_session)
    with app.app_context():
        for engine in db.engines.values():
            # Fires once a connection is checked out and (pre-)pinged successfully.
            event.listen(engine, "engine_connect", lambda _connection: outage.end())
