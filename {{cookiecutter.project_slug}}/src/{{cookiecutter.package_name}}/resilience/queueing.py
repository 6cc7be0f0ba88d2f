"""How long a request waited for a thread of Gunicorn's worker (backpressure.py).

Gunicorn's gthread worker hands each readable connection to a thread pool,
whose queue is where requests wait once every thread is busy: the app cannot
see that wait, yet it is the one that grows without bound under overload.
``QueueTimedWorker`` is that worker with a pool that notes, for each job, the
time it waited for a thread; the request's thread reads it with
``take_queue_wait``. The wait ends when a thread picks the connection up,
before it reads the request: a client that is slow to send is not counted as
queueing (the proxy in front buffers those, and the app reads the body before
a request takes a slot).

``queued`` says how many connections wait for a thread of this process right
now: a request over its client's share of slots gives its thread up at once
when anyone else waits (backpressure.py).

Gunicorn restarts a worker after ``max_requests`` requests, against slow
leaks; a request refused at once (shed, or over a limit) leaks nothing, and a
flood of them would restart a worker every few seconds. ``note_refused``
marks one, and the worker leaves it out of its count.

gunicorn.conf.py selects the worker. Under another server (``flask run``, the
test client) there is no such wait to read: ``take_queue_wait`` says None and
``queued`` 0.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

_waits = threading.local()
# Jobs submitted to and started by this process's pools (queued is the
# difference), and requests refused at once. The worker's main loop alone
# submits; the lock orders the pool threads' writes.
_counts = {"submitted": 0, "started": 0, "refused": 0}
_counting = threading.Lock()


def queued() -> int:
    """Jobs (connections) waiting for a thread of this process, now."""
    return _counts["submitted"] - _counts["started"]


def take_queue_wait() -> float | None:
    """Seconds this thread's current job waited in the pool; once, then None.

    Once: an HTTP/2 connection serves several requests in one job, and only
    the first of them waited in the queue.
    """
    waited: float | None = getattr(_waits, "seconds", None)
    _waits.seconds = None
    return waited


def _run_timed(
    queued_at: float, job: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    _waits.seconds = time.monotonic() - queued_at
    with _counting:
        _counts["started"] += 1
    return job(*args, **kwargs)


def note_refused() -> None:
    """Leave the current request out of the worker's max_requests count."""
    with _counting:
        _counts["refused"] += 1


def take_refused() -> int:
    """Requests refused since the last call (the worker's to call)."""
    with _counting:
        refused = _counts["refused"]
        _counts["refused"] = 0
    return refused


class TimedThreadPool(ThreadPoolExecutor):
    """A thread pool whose jobs know how long they waited for a thread."""

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Future[Any]:
        _counts["submitted"] += 1
        return super().submit(_run_timed, time.monotonic(), fn, *args, **kwargs)


class QueueTimedWorker(ThreadWorker):
    """Gunicorn's gthread worker, with a pool that times each request's wait."""

    def get_thread_pool(self) -> ThreadPoolExecutor:
        # The override point gthread offers for its pool.
        return TimedThreadPool(max_workers=self.cfg.threads)

    def handle_request(self, req: Any, conn: Any) -> Any:
        # Gunicorn counts this request and compares with max_requests here:
        # the requests refused so far are taken out of the count first.
        self.nr -= take_refused()
        return super().handle_request(req, conn)
