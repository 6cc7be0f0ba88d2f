"""Backpressure: shedding by queueing delay, slots per client, what takes no slot.

The rules are driven with a clock moved by hand (no timing decides a test);
the app-level tests hold slots with views that wait for an event.
tests/test_gunicorn.py shows Gunicorn's worker measuring the wait for a thread.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flask import Flask, request
from gunicorn.workers.gthread import ThreadWorker
from werkzeug.exceptions import InternalServerError

from {{ cookiecutter.package_name }}.errors import PROBLEM_MEDIA_TYPE
from {{ cookiecutter.package_name }}.resilience import (
    backpressure,
    events,
    queueing,
)
from {{ cookiecutter.package_name }}.resilience.backpressure import (
    ADMITTED,
    BUSY,
    IN_FLIGHT_POLICY,
    QUEUE_WAIT_KEY,
    SHED,
    STAY_SHARE,
    Admission,
)
from {{ cookiecutter.package_name }}.resilience.queueing import (
    QueueTimedWorker,
    TimedThreadPool,
    take_queue_wait,
)

from conftest import AppFactory, problem

ITEMS = "/api/v1/items"
TIMEOUT = 0.25
TARGET = 0.01
# Generous: a thread that must get a slot gets it as soon as one is released.
JOIN = 10.0


@dataclass
class Clock:
    """A monotonic clock moved by hand."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Worker:
    """An Admission on a hand-moved clock: 3 slots, 2 per client."""

    clock: Clock = field(default_factory=Clock)
    admission: Admission = field(
        default_factory=lambda: Admission(
            limit=3, per_client=2, timeout=TIMEOUT, target=TARGET
        )
    )

    def __post_init__(self) -> None:
        self.admission.clock = self.clock

    def serve(self, waited: float, client: str = "ip:10.0.0.1") -> bool:
        """One request that queued `waited` s for a thread: admitted (and done
        at once) or shed, as a worker decides it."""
        if self.admission.late(client, waited) is not None:
            return False
        if self.admission.enter(client, waited) != ADMITTED:
            return False
        self.admission.leave(client)
        return True

    def traffic(self, seconds: float, per_second: int, waited: float) -> list[bool]:
        """`per_second` requests a second for `seconds`, each having waited `waited`."""
        outcomes = []
        for _ in range(round(seconds * per_second)):
            outcomes.append(self.serve(waited))
            self.clock.now += 1 / per_second
        return outcomes


# --- The rules, on a clock moved by hand ----------------------------------------


def test_no_request_is_shed_while_queueing_stays_under_the_timeout() -> None:
    worker = Worker()
    # Ten seconds of a busy worker: every request queued, none for too long.
    assert all(worker.traffic(10, 400, waited=TIMEOUT * 0.9))
    assert worker.admission.shed == 0
    assert not worker.admission.overloaded()
    assert worker.admission.budget() == TIMEOUT


def test_shedding_starts_once_a_request_outwaits_the_timeout() -> None:
    worker = Worker()
    assert not worker.serve(TIMEOUT * 1.01)
    assert worker.admission.shed == 1
    # Overloaded now: a request may wait the target only, so the queue stays
    # short and the requests admitted are answered at once.
    assert worker.admission.overloaded()
    assert worker.admission.budget() == TARGET
    assert not worker.serve(TARGET * 2)
    assert worker.serve(TARGET / 2)


def test_the_overload_lasts_while_the_worker_keeps_shedding() -> None:
    worker = Worker()
    worker.serve(TIMEOUT * 2)
    # Twice what the worker serves in time: half of the requests outwait the
    # target, second after second; the worker stays overloaded throughout.
    for _ in range(5):
        for _ in range(50):
            worker.serve(TARGET * 3)
            worker.serve(TARGET / 2)
            worker.clock.now += 0.01
        assert worker.admission.overloaded()
    assert worker.admission.shed == 1 + 250
    # Once the sheds stop, the overload ends: after the second in which they
    # stopped (it shed enough still), and the next, which shed none.
    worker.traffic(2.1, 100, waited=0.0)
    assert not worker.admission.overloaded()


def test_the_overload_ends_once_sheds_fall_below_the_share() -> None:
    worker = Worker()
    worker.serve(TIMEOUT * 2)
    # A second in which fewer than 1 in 20 requests is shed...
    shed_every = round(1 / STAY_SHARE) + 5
    for number in range(200):
        worker.serve(TARGET * 3 if number % shed_every == 0 else 0.0)
        worker.clock.now += 0.005
    assert worker.admission.shed < STAY_SHARE * 200
    worker.clock.now += 0.01
    worker.serve(0.0)  # the first decision of the next second
    # ...ends it: requests may queue up to the timeout again.
    assert not worker.admission.overloaded()
    assert worker.serve(TIMEOUT * 0.9)


def test_an_idle_worker_is_not_overloaded() -> None:
    worker = Worker()
    worker.serve(TIMEOUT * 2)
    worker.clock.now += worker.admission.hold * 1.01
    assert not worker.admission.overloaded()


def test_one_client_holds_all_slots_but_one() -> None:
    worker = Worker()
    admission = worker.admission
    assert admission.enter("ip:10.0.0.1") == ADMITTED
    assert admission.enter("ip:10.0.0.1") == ADMITTED
    # Its third request finds no slot it may take: refused as that client's
    # own excess at the end of its budget (spent already, on this clock),
    # while another client gets one.
    assert admission.enter("ip:10.0.0.1", waited=TIMEOUT) == BUSY
    assert admission.enter("ip:10.0.0.2", waited=TIMEOUT * 0.5) == ADMITTED
    assert admission.holders == {"ip:10.0.0.1": 2, "ip:10.0.0.2": 1}
    # The slots are all taken: a third client is shed.
    assert admission.enter("ip:10.0.0.3", waited=TIMEOUT) == SHED
    assert (admission.busy, admission.shed) == (1, 1)
    for client in ("ip:10.0.0.1", "ip:10.0.0.1", "ip:10.0.0.2"):
        admission.leave(client)
    assert (admission.active, admission.holders) == (0, {})
    with pytest.raises(RuntimeError, match="left more slots than were taken"):
        admission.leave("ip:10.0.0.1")


def test_a_request_waits_for_a_slot_within_its_budget() -> None:
    admission = Admission(limit=1, per_client=1, timeout=JOIN, target=TARGET)
    assert admission.enter("ip:10.0.0.1") == ADMITTED
    admitted: list[str] = []
    waiting = threading.Thread(
        target=lambda: admitted.append(admission.enter("ip:10.0.0.2"))
    )
    waiting.start()
    admission.leave("ip:10.0.0.1")
    waiting.join(JOIN)
    assert admitted == [ADMITTED]
    assert admission.shed == 0
    assert admission.waiting == {}


def test_a_request_that_gets_no_slot_within_its_budget_is_shed() -> None:
    # A real, short budget: the slot is never given back.
    admission = Admission(limit=1, per_client=1, timeout=0.05, target=0.01)
    assert admission.enter("ip:10.0.0.1") == ADMITTED
    assert admission.enter("ip:10.0.0.2") == SHED
    assert admission.shed == 1
    assert admission.overloaded()


def test_one_clients_excess_is_never_shed_nor_overloads_the_worker() -> None:
    worker = Worker()
    admission = worker.admission
    assert admission.enter("ip:10.0.0.1") == ADMITTED
    assert admission.enter("ip:10.0.0.1") == ADMITTED
    # A burst of its excess, each having waited beyond the budget: refused as
    # its own, counted apart from the shed ones.
    for _ in range(50):
        assert admission.enter("ip:10.0.0.1", waited=TIMEOUT * 2) == BUSY
    assert (admission.busy, admission.shed) == (50, 0)
    assert not admission.overloaded()
    # Another client still gets the slot kept for it, on the keeping-up budget.
    assert admission.budget() == TIMEOUT
    assert admission.enter("ip:10.0.0.2") == ADMITTED


def test_while_a_client_is_over_its_share_its_late_requests_are_its_own() -> None:
    worker = Worker()
    admission = worker.admission
    assert admission.enter("ip:10.0.0.1") == ADMITTED
    assert admission.enter("ip:10.0.0.1") == ADMITTED
    # Requests that outwaited their budget in the queue for a thread, behind
    # that client's: its own is its 429, another client's is let on...
    assert admission.late("ip:10.0.0.1", TIMEOUT * 2) == BUSY
    assert admission.late("ip:10.0.0.2", TIMEOUT * 2) is None
    # ...and takes the slot kept free for others, at once.
    assert admission.enter("ip:10.0.0.2", TIMEOUT * 2) == ADMITTED
    # With no slot left, a third client's is shed when it asks for one.
    assert admission.late("ip:10.0.0.3", TIMEOUT * 2) is None
    assert admission.enter("ip:10.0.0.3", TIMEOUT * 2) == SHED
    assert (admission.busy, admission.shed) == (1, 1)


def test_a_client_stays_over_its_share_for_a_while_after_its_excess() -> None:
    worker = Worker()
    admission = worker.admission
    assert admission.enter("ip:10.0.0.1") == ADMITTED
    assert admission.enter("ip:10.0.0.1") == ADMITTED
    assert admission.enter("ip:10.0.0.1", waited=TIMEOUT) == BUSY
    admission.leave("ip:10.0.0.1")
    admission.leave("ip:10.0.0.1")
    # It holds nothing now, but its flood may still fill the queue.
    assert admission.late("ip:10.0.0.1", TIMEOUT * 2) == BUSY
    assert admission.late("ip:10.0.0.2", TIMEOUT * 2) is None
    worker.clock.now += admission.hold * 1.01
    # The while has passed: a late request is shed, whoever sent it.
    assert admission.late("ip:10.0.0.1", TIMEOUT * 2) == SHED
    assert (admission.busy, admission.shed) == (2, 1)


def test_clients_over_their_share_are_forgotten_once_their_while_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backpressure, "EXCESS_MEMORY", 2)
    worker = Worker()
    admission = worker.admission
    for client in ("ip:10.0.0.1", "ip:10.0.0.2"):
        assert admission.late(client, TIMEOUT * 2) in {SHED, None}
    admission.excess_until = {"ip:10.0.0.1": 0.0, "ip:10.0.0.2": 0.0}
    assert admission.enter("ip:10.0.0.3") == ADMITTED
    assert admission.enter("ip:10.0.0.3") == ADMITTED
    assert admission.enter("ip:10.0.0.3", waited=TIMEOUT) == BUSY
    assert admission.excess_until == {"ip:10.0.0.3": worker.clock.now + admission.hold}


def test_refused_requests_are_left_out_of_the_workers_request_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counted: list[int] = []
    monkeypatch.setattr(
        ThreadWorker, "handle_request", lambda worker, *_: counted.append(worker.nr)
    )
    worker = object.__new__(QueueTimedWorker)  # no Gunicorn arbiter here
    worker.nr = 10
    queueing.take_refused()
    queueing.note_refused()
    queueing.note_refused()
    worker.handle_request(None, None)
    worker.handle_request(None, None)
    # Gunicorn adds this request to nr and compares with max_requests after.
    assert counted == [8, 8]


def test_an_excess_request_waits_for_its_clients_slot_if_nobody_waits() -> None:
    admission = Admission(limit=2, per_client=1, timeout=JOIN, target=TARGET)
    assert admission.enter("ip:10.0.0.1") == ADMITTED
    decided: list[str] = []
    second = threading.Thread(
        target=lambda: decided.append(admission.enter("ip:10.0.0.1"))
    )
    second.start()
    # Its first request ends: the second takes the client's slot.
    admission.leave("ip:10.0.0.1")
    second.join(JOIN)
    assert decided == [ADMITTED]
    assert (admission.busy, admission.shed) == (0, 0)


def test_an_excess_request_gives_way_to_another_client_waiting_for_a_slot() -> None:
    admission = Admission(limit=2, per_client=1, timeout=JOIN, target=TARGET)
    assert admission.enter("ip:10.0.0.1") == ADMITTED
    assert admission.enter("ip:10.0.0.2") == ADMITTED
    # A third client waits for room (its budget is long)...
    third: list[str] = []
    waiter = threading.Thread(
        target=lambda: third.append(admission.enter("ip:10.0.0.3"))
    )
    waiter.start()
    try:
        wait_for(lambda: "ip:10.0.0.3" in admission.waiting)
        # ...so the first client's excess gives its thread up at once, well
        # within its own long budget.
        assert admission.enter("ip:10.0.0.1") == BUSY
    finally:
        admission.leave("ip:10.0.0.2")
        waiter.join(JOIN)
    assert third == [ADMITTED]
    assert (admission.busy, admission.shed) == (1, 0)


def test_an_excess_request_gives_way_to_connections_waiting_for_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admission = Admission(limit=2, per_client=1, timeout=JOIN, target=TARGET)
    assert admission.enter("ip:10.0.0.1") == ADMITTED
    # Gunicorn's pool has a connection waiting for a thread.
    monkeypatch.setattr(backpressure, "queued", lambda: 1)
    assert admission.enter("ip:10.0.0.1") == BUSY


def test_the_pool_counts_the_jobs_waiting_for_a_thread() -> None:
    release = threading.Event()
    before = queueing.queued()
    with TimedThreadPool(max_workers=1) as pool:
        blocker = pool.submit(release.wait, JOIN)
        wait_for(lambda: queueing.queued() == before)
        pool.submit(lambda: None)
        assert queueing.queued() == before + 1
        release.set()
        assert blocker.result(JOIN)
    assert queueing.queued() == before


def wait_for(condition: Callable[[], bool]) -> None:
    """Until `condition` holds (a thread got where the test needs it)."""
    deadline = time.monotonic() + JOIN
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.001)


def test_the_pool_tells_each_job_how_long_it_queued() -> None:
    release = threading.Event()
    with TimedThreadPool(max_workers=1) as pool:
        blocker = pool.submit(release.wait, JOIN)
        queued = pool.submit(take_queue_wait)
        # The second job waits for the only thread until the first ends.
        release.set()
        assert blocker.result(JOIN)
        waited = queued.result(JOIN)
        assert waited is not None
        assert waited >= 0
        # Once: the next job of the same thread reads its own wait.
        assert (
            pool.submit(lambda: (take_queue_wait(), take_queue_wait())).result(JOIN)[1]
            is None
        )
    assert take_queue_wait() is None  # this thread is not the pool's


# --- In the app ----------------------------------------------------------------


@dataclass
class SlowApp:
    """An app with one slot, and a view that holds it until released."""

    app: Flask
    entered: threading.Event
    release: threading.Event
    threads: list[threading.Thread] = field(default_factory=list)

    def hold_the_slot(self, client: str = "10.0.0.9") -> None:
        holder = threading.Thread(
            target=lambda: self.app.test_client().get(
                "/slow", environ_base={"REMOTE_ADDR": client}
            )
        )
        holder.start()
        self.threads.append(holder)
        assert self.entered.wait(JOIN)

    def finish(self) -> None:
        self.release.set()
        for thread in self.threads:
            thread.join(JOIN)


@pytest.fixture
def slow_app(make_app: AppFactory) -> Iterator[SlowApp]:
    app = make_app(
        MAX_IN_FLIGHT=1,
        MAX_IN_FLIGHT_PER_CLIENT=1,
        REQUEST_QUEUE_TIMEOUT=TIMEOUT,
        REQUEST_QUEUE_TARGET=TARGET,
        tables=True,
    )
    entered = threading.Event()
    release = threading.Event()

    @app.get("/slow")
    def slow() -> str:
        entered.set()
        release.wait(JOIN)
        return "done"

    @app.get("/boom")
    def boom() -> str:
        raise InternalServerError

    @app.post("/upload")
    def upload() -> str:
        return f"{len(request.get_data())} bytes"

    found = SlowApp(app, entered, release)
    yield found
    found.finish()


def test_a_request_beyond_the_slots_is_shed_after_its_budget(
    slow_app: SlowApp,
) -> None:
    slow_app.hold_the_slot()
    queueing.take_refused()
    shed = slow_app.app.test_client().get(ITEMS)
    assert queueing.take_refused() == 1
    body = problem(shed, 503)
    assert body["detail"] == "The server is at capacity; try again in a moment."
    assert shed.headers["Retry-After"] == "1"
    assert slow_app.app.extensions[backpressure.EXTENSION_KEY].shed == 1
    slow_app.finish()
    assert slow_app.app.test_client().get("/slow").status_code == 200


def test_a_request_that_finds_every_slot_taken_waits_for_one(
    slow_app: SlowApp,
) -> None:
    slow_app.hold_the_slot()
    answers: list[int] = []
    waiting = threading.Thread(
        target=lambda: answers.append(slow_app.app.test_client().get(ITEMS).status_code)
    )
    waiting.start()
    slow_app.threads.append(waiting)
    # Not shed at once: the slot is given back well within the timeout.
    waiting.join(TIMEOUT / 5)
    slow_app.release.set()
    waiting.join(JOIN)
    assert answers == [200]
    assert slow_app.app.extensions[backpressure.EXTENSION_KEY].shed == 0


def test_a_request_that_waited_too_long_is_shed_before_the_app_sees_it(
    slow_app: SlowApp,
) -> None:
    client = slow_app.app.test_client()
    shed = client.get(ITEMS, environ_overrides={QUEUE_WAIT_KEY: TIMEOUT * 2})
    body = problem(shed, 503)
    assert body == {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "The server is at capacity; try again in a moment.",
    }
    assert shed.headers["Retry-After"] == "1"
    assert shed.headers["Cache-Control"] == "no-store"
    # Overloaded now: a shorter wait is enough to be shed.
    overloaded = {QUEUE_WAIT_KEY: TARGET * 2}
    assert client.get(ITEMS, environ_overrides=overloaded).status_code == 503
    assert client.get(ITEMS, environ_overrides={QUEUE_WAIT_KEY: 0.0}).status_code == 200
    # The probes and /metrics are never shed, however long they waited (the
    # readiness probe says the worker is overloaded, in its own report).
    for path in (
        "/health/live",
        "/health/ready",
        "/health/startup",
        "/health/dependencies",
        "/metrics",
    ):
        answer = client.get(path, environ_overrides={QUEUE_WAIT_KEY: 60.0})
        assert answer.mimetype != PROBLEM_MEDIA_TYPE, path
    assert client.get("/health/live").status_code == 200


def test_probes_take_no_slot(slow_app: SlowApp) -> None:
    slow_app.hold_the_slot()
    client = slow_app.app.test_client()
    assert client.get("/health/live").status_code == 200
    assert client.get("/health/dependencies").status_code == 200
    # Readiness answers at once too: the database answers, the worker has shed
    # nothing (the slot is merely taken).
    assert client.get("/health/ready").status_code == 200
    assert slow_app.app.extensions[backpressure.EXTENSION_KEY].shed == 0


def test_static_files_take_no_slot(slow_app: SlowApp, tmp_path: Path) -> None:
    (tmp_path / "site.css").write_text("body { margin: 0; }\n", encoding="utf-8")
    slow_app.app.static_folder = str(tmp_path)
    slow_app.hold_the_slot()
    # A page's stylesheet and scripts come side by side with its other
    # requests: served at once, neither queued for a slot nor refused.
    with slow_app.app.test_client().get("/static/site.css") as answer:
        assert answer.status_code == 200
        assert answer.get_data() == b"body { margin: 0; }\n"
    admission = slow_app.app.extensions[backpressure.EXTENSION_KEY]
    assert (admission.active, admission.busy, admission.shed) == (1, 0, 0)


def test_a_slow_body_holds_no_slot(slow_app: SlowApp) -> None:
    # The only slot is free while a client is still sending its body: the body
    # is read before the request takes a slot.
    arrived = threading.Event()
    finish = threading.Event()

    class SlowBody:
        """A 3-byte body whose bytes come once `finish` is set."""

        body = b'"x"'

        def __init__(self) -> None:
            self.position = 0

        def tell(self) -> int:
            return self.position

        def seek(self, offset: int, whence: int = 0) -> int:
            self.position = len(self.body) if whence == io.SEEK_END else offset
            return self.position

        def read(self, _size: int = -1) -> bytes:
            arrived.set()
            finish.wait(JOIN)
            return self.body

    results: list[int] = []
    sender = threading.Thread(
        target=lambda: results.append(
            slow_app.app.test_client()
            .post("/upload", input_stream=SlowBody(), content_type="application/json")
            .status_code
        )
    )
    sender.start()
    slow_app.threads.append(sender)
    assert arrived.wait(JOIN)
    assert slow_app.app.test_client().get(ITEMS).status_code == 200
    finish.set()
    sender.join(JOIN)
    assert results == [200]


def test_a_refused_request_holds_no_slot(make_app: AppFactory) -> None:
    # A 429 is decided before the request takes a slot: with the only slot
    # held, an over-limit request still gets its 429 at once, not a 503.
    app = make_app(
        MAX_IN_FLIGHT=1,
        RATE_LIMITS_ENABLED=True,
        RATELIMIT_DEFAULT="1 per minute",
        REQUEST_QUEUE_TIMEOUT=TIMEOUT,
        tables=True,
    )
    entered = threading.Event()
    release = threading.Event()

    @app.get("/slow")
    def slow() -> str:
        entered.set()
        release.wait(JOIN)
        return "done"

    client = app.test_client()
    assert client.get("/api/openapi.json").status_code == 200  # its one a minute
    holder = threading.Thread(
        target=lambda: app.test_client().get(
            "/slow", environ_base={"REMOTE_ADDR": "10.0.0.9"}
        )
    )
    holder.start()
    try:
        assert entered.wait(JOIN)
        queueing.take_refused()
        problem(client.get("/api/openapi.json"), 429)
        assert app.extensions[backpressure.EXTENSION_KEY].shed == 0
        # Refused at once: not one of Gunicorn's max_requests.
        assert queueing.take_refused() == 1
    finally:
        release.set()
        holder.join(JOIN)


def test_one_client_cannot_take_every_slot(make_app: AppFactory) -> None:
    app = make_app(MAX_IN_FLIGHT=2, REQUEST_QUEUE_TIMEOUT=TIMEOUT, tables=True)
    entered = threading.Event()
    release = threading.Event()

    @app.get("/slow")
    def slow() -> str:
        entered.set()
        release.wait(JOIN)
        return "done"

    hog = {"environ_base": {"REMOTE_ADDR": "10.0.0.1"}}
    holder = threading.Thread(target=lambda: app.test_client().get("/slow", **hog))
    holder.start()
    try:
        assert entered.wait(JOIN)
        # MAX_IN_FLIGHT_PER_CLIENT is MAX_IN_FLIGHT - 1: its excess is its
        # own, a 429 (after its budget: nobody else waits here), never shed...
        policies: list[str] = []

        def note(_sender: Flask, *, policy: str, **_extra: object) -> None:
            policies.append(policy)

        with events.rate_limited.connected_to(note, app):
            for _ in range(5):
                excess = app.test_client().get(ITEMS, **hog)
                body = problem(excess, 429)
                assert excess.headers["Retry-After"] == "1"
                assert "in progress at once" in body["detail"]
        assert policies == [IN_FLIGHT_POLICY] * 5
        admission = app.extensions[backpressure.EXTENSION_KEY]
        assert (admission.busy, admission.shed) == (5, 0)
        # ...so the worker is not overloaded: the last slot serves another
        # client, and readiness holds.
        other = {"environ_base": {"REMOTE_ADDR": "10.0.0.2"}}
        assert app.test_client().get(ITEMS, **other).status_code == 200
        assert app.test_client().get("/health/ready", **other).status_code == 200
    finally:
        release.set()
        holder.join(JOIN)


def test_a_flood_of_one_client_is_refused_as_its_own_and_others_served(
    make_app: AppFactory,
) -> None:
    # Behind one proxy: the address is X-Forwarded-For's last entry, which the
    # early refusal reads as the app will.
    app = make_app(
        MAX_IN_FLIGHT=2,
        MAX_IN_FLIGHT_PER_CLIENT=1,
        REQUEST_QUEUE_TIMEOUT=TIMEOUT,
        TRUSTED_PROXIES=1,
        tables=True,
    )
    entered = threading.Event()
    release = threading.Event()

    @app.get("/slow")
    def slow() -> str:
        entered.set()
        release.wait(JOIN)
        return "done"

    def sent_by(address: str, waited: float = 0.0) -> dict[str, object]:
        return {
            "headers": {"X-Forwarded-For": f"198.51.100.7, {address}"},
            "environ_overrides": {QUEUE_WAIT_KEY: waited},
        }

    holder = threading.Thread(
        target=lambda: app.test_client().get("/slow", **sent_by("203.0.113.1"))
    )
    holder.start()
    try:
        assert entered.wait(JOIN)
        # The flooder's requests waited in the queue behind its own: its 429,
        # made before the app saw them.
        late = app.test_client().get(ITEMS, **sent_by("203.0.113.1", TIMEOUT * 2))
        assert "in progress at once" in problem(late, 429)["detail"]
        assert late.headers["Retry-After"] == "1"
        # Another client's request waited as long, behind the flood: served.
        other = app.test_client().get(ITEMS, **sent_by("203.0.113.2", TIMEOUT * 2))
        assert other.status_code == 200
        admission = app.extensions[backpressure.EXTENSION_KEY]
        assert (admission.busy, admission.shed) == (1, 0)
        assert not admission.overloaded()
    finally:
        release.set()
        holder.join(JOIN)


def test_a_failed_request_gives_its_slot_back(slow_app: SlowApp) -> None:
    client = slow_app.app.test_client()
    for _ in range(3):
        problem(client.get("/boom"), 500)
    assert slow_app.app.extensions[backpressure.EXTENSION_KEY].active == 0
    assert client.get(ITEMS).status_code == 200


def test_readiness_fails_while_the_worker_is_overloaded(slow_app: SlowApp) -> None:
    client = slow_app.app.test_client()
    client.get(ITEMS, environ_overrides={QUEUE_WAIT_KEY: TIMEOUT * 2})
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.headers["Retry-After"] == "1"
    assert ready.json is not None
    assert ready.json["checks"]["capacity"]["status"] == "fail"
    assert ready.json["checks"]["database"]["status"] == "pass"
    admission = slow_app.app.extensions[backpressure.EXTENSION_KEY]
    clock = Clock(admission.clock() + admission.hold * 1.01)
    admission.clock = clock
    assert client.get("/health/ready").status_code == 200


def test_the_slot_is_taken_after_every_other_hook(make_app: AppFactory) -> None:
    hooks = make_app().before_request_funcs[None]
    admitting = [getattr(hook, "func", None) is backpressure.admit for hook in hooks]
    assert admitting.count(True) == 1
    assert admitting[-1]
