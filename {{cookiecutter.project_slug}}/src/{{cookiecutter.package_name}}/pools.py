"""The connection pool of an in-memory SQLite database: its one connection, held
by one thread at a time.

An in-memory SQLite database lives in one connection, so Flask-SQLAlchemy hands
that connection to every checkout (SQLAlchemy's StaticPool, sqlite3's thread
check off). Two threads using it at once, such as two requests under the
threads of ``flask run`` or Gunicorn, or a test's request threads, share one
transaction, and CPython's sqlite3 module is not safe for that: on 3.12 and
later its statement cache hands one thread's statement to another, giving
wrong rows, ``InterfaceError: bad parameter or other API misuse``, or a
segmentation fault. This pool lends the connection to one thread at a time;
the others wait for it, as they would for a pooled connection of any database.
"""

from __future__ import annotations

import threading
from typing import Any, cast

from sqlalchemy import exc
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

# Seconds a thread waits for the connection (SQLAlchemy's pool_timeout default).
DEFAULT_TIMEOUT = 30.0


class SerialStaticPool(StaticPool):
    """StaticPool's one connection, held by one thread at a time.

    The thread that holds it may check it out again and shares it, as every
    checkout did with StaticPool (a second app context's session, or a task
    run eagerly inside a request): one thread's uses never overlap. Once the
    connection is returned, the next thread gets it; a thread waits up to
    `timeout` seconds, then gets SQLAlchemy's pool TimeoutError (a 503 for a
    request). StaticPool takes the connection back at the first return of
    such shared checkouts, so keep them nested: return the last one taken
    first, as `with` blocks do.
    """

    # `timeout` is positional-or-keyword: create_engine() hands pool_timeout
    # only to the arguments it sees in the signature.
    def __init__(
        self, creator: Any, timeout: float = DEFAULT_TIMEOUT, **kw: Any
    ) -> None:
        super().__init__(creator, **kw)
        self.timeout = timeout
        self._free = threading.Condition()
        self._holder: int | None = None

    def recreate(self) -> SerialStaticPool:
        # StaticPool.recreate() makes an instance of self's class.
        pool = cast("SerialStaticPool", super().recreate())
        pool.timeout = self.timeout
        return pool

    def _do_get(self) -> ConnectionPoolEntry:
        me = threading.get_ident()
        with self._free:
            if not self._free.wait_for(
                lambda: self._holder in (None, me), timeout=self.timeout
            ):
                raise exc.TimeoutError(
                    "the in-memory SQLite connection stayed in use by another "
                    f"thread for {self.timeout:g} s",
                    code="3o7r",
                )
            self._holder = me
        try:
            return super()._do_get()
        except BaseException:
            self._give_back()
            raise

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        super()._do_return_conn(record)
        self._give_back()

    def _give_back(self) -> None:
        with self._free:
            self._holder = None
            self._free.notify()
