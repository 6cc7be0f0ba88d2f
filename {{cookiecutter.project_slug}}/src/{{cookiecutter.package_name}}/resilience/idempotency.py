"""Idempotency keys (IETF httpapi Idempotency-Key draft) for unsafe requests.

A request that carries ``Idempotency-Key`` runs once. The first one reserves the
key for its caller; its answer is stored, and a retry with the same key and the
same request (method, path, query and body) gets that answer again, marked
``Idempotent-Replayed: true``. The same key with a different request is a 422;
a retry while the first is still running is a 409. 5xx answers are not kept,
so such a request can be retried. Keys are scoped to the caller's user (any of
their tokens, sessions and API keys: a retry may carry a refreshed token), else
to the client's address; they expire after IDEMPOTENCY_TTL seconds, and live in
Redis with REDIS_URL, else in memory. While Redis is unreachable, requests with a key
get 503 (see IdempotencyKeys): running them could run them twice.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, NoReturn, TypedDict

import redis
from flask import Flask, Response, current_app, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import Conflict, ServiceUnavailable

from ..errors import FieldError, RequestValidationError, field_errors
from .limits import quota_identity, scope_of
from .store import RedisStore

EXTENSION_KEY = "idempotency"
HEADER = "Idempotency-Key"
# Sent "true" by a client repeating a request: a key with no record then means
# the record was lost (expired, or Redis lost it), which is logged.
RETRY_HEADER = "Idempotency-Retry"
# How long a reservation holds while its request runs; a crashed worker's
# reservation expires after this, so the key becomes usable again.
RUNNING_TTL = 60
# Headers worth replaying: the rest are recomputed for the new response.
REPLAYED_HEADERS = ("Content-Type", "Location")
MEMORY_CAPACITY = 10_000
logger = logging.getLogger(__name__)

Decision = Literal["run", "replay", "conflict", "mismatch"]


class IdempotencyKeyHeader(BaseModel):
    """The Idempotency-Key request header, as the OpenAPI document shows it."""

    model_config = ConfigDict(populate_by_name=True)

    # The draft makes the key a structured-field string: printable ASCII, bounded.
    idempotency_key: str | None = Field(
        default=None,
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x20-\x7e]+$",
        description=(
            "Send a unique value (a UUID) to make a retry of this request safe: "
            "the first request runs, a retry with the same key and body gets "
            "its answer again. Kept for 24 hours."
        ),
    )
    # No null: a header is a string, and "null" is not one of these.
    idempotency_retry: Literal["true", "false"] = Field(
        default="false",
        alias="Idempotency-Retry",
        description=(
            "Send true when this request repeats an earlier one with the same "
            "Idempotency-Key. If the key has no record (it expired, or the "
            "service's store lost it), the request runs again, and the service "
            "logs a warning."
        ),
    )


class Record(TypedDict, total=False):
    """What is kept under a key: a reservation, then the answer."""

    fingerprint: str
    state: Literal["running", "done"]
    status: int
    headers: dict[str, str]
    body: str


@dataclass
class Reservation:
    key: str
    fingerprint: str
    decision: Decision
    record: Record


class MemoryKeys:
    """Keys in this process: bounded (oldest out first), expiring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def reserve(self, key: str, value: str, ttl: int) -> str | None:
        """Store `value` unless `key` exists; return the existing value if it does."""
        now = time.monotonic()
        with self._lock:
            found = self._items.get(key)
            if found is not None and found[0] > now:
                return found[1]
            self._items[key] = (now + ttl, value)
            self._items.move_to_end(key)
            while len(self._items) > MEMORY_CAPACITY:
                self._items.popitem(last=False)
            return None

    def put(self, key: str, value: str, ttl: int) -> None:
        with self._lock:
            self._items[key] = (time.monotonic() + ttl, value)

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


class KeysUnavailable(ServiceUnavailable):
    """503: the shared key store cannot be reached, so "at most once" cannot be kept."""

    def __init__(self) -> None:
        super().__init__(
            "Idempotency keys cannot be checked right now; retry later with the "
            "same key."
        )


class IdempotencyKeys:
    """Reservations and stored answers: in Redis with REDIS_URL, else in memory.

    With Redis the store fails closed: while it is unreachable, a request that
    carries a key is refused (503) rather than run, since every worker would
    otherwise keep keys of its own and run the same request once each.
    """

    def __init__(self, store: RedisStore | None, ttl: int) -> None:
        self.store = store
        self.ttl = ttl
        self.memory = MemoryKeys()

    def reserve(self, key: str, value: str) -> str | None:
        """Reserve `key` with `value`; if it is taken, return what it holds."""
        store = self.store
        if store is None:
            return self.memory.reserve(key, value, RUNNING_TTL)
        if not store.gate.is_open():
            raise KeysUnavailable
        try:
            if store.reserve(key, value, ttl=RUNNING_TTL):
                store.gate.succeeded()
                return None
            existing = store.get(key)
        except redis.RedisError as error:
            store.gate.failed(error)
            raise KeysUnavailable from None
        store.gate.succeeded()
        # It expired between SET and GET: the next retry will take it.
        return existing.decode() if existing else value

    def put(self, key: str, value: str) -> None:
        """Keep the answer; if Redis went away meanwhile, the reservation expires."""
        store = self.store
        if store is None:
            self.memory.put(key, value, self.ttl)
            return
        try:
            store.set(key, value, ttl=self.ttl)
        except redis.RedisError as error:
            store.gate.failed(error)
            logger.warning(
                "the answer to an idempotent request could not be stored (%s): "
                "a retry after %s s will run it again",
                type(error).__name__,
                RUNNING_TTL,
            )
        else:
            store.gate.succeeded()

    def drop(self, key: str) -> None:
        """Free the key (after a failure), so a retry may run."""
        store = self.store
        if store is None:
            self.memory.drop(key)
            return
        try:
            store.delete(key)
        except redis.RedisError as error:
            store.gate.failed(error)


def fingerprint() -> str:
    """What makes two requests "the same": method, path, query string and body."""
    digest = hashlib.sha256()
    for part in (request.method, request.path, request.query_string.decode()):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(request.get_data(cache=True))
    return digest.hexdigest()


def storage_key(idempotency_key: str) -> str:
    scope = scope_of(quota_identity())
    key_hash = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    prefix = current_app.config["REDIS_KEY_PREFIX"]
    return f"{prefix}:idempotency:{scope}:{key_hash}"


def begin(keys: IdempotencyKeys, idempotency_key: str) -> Reservation:
    """Reserve the key for this request, or say why the request must not run."""
    try:
        IdempotencyKeyHeader.model_validate({HEADER: idempotency_key})
    except ValidationError as error:
        # The header's documented schema decides, and its failures are 422s.
        raise RequestValidationError(field_errors(error), error.error_count()) from None
    key = storage_key(idempotency_key)
    mine = fingerprint()
    reservation: Record = {"fingerprint": mine, "state": "running"}
    existing = keys.reserve(key, json.dumps(reservation))
    if existing is None:
        if request.headers.get(RETRY_HEADER, "").strip().lower() == "true":
            # Run it (its answer is what the client lacks), but say so: a
            # second write may be happening.
            logger.warning(
                "a retried request's Idempotency-Key has no record (expired after "
                "IDEMPOTENCY_TTL, or lost by its store): it runs again, %s %s",
                request.method,
                request.path[:256],
            )
        return Reservation(key, mine, "run", reservation)
    record: Record = json.loads(existing)
    if record.get("fingerprint") != mine:
        return Reservation(key, mine, "mismatch", record)
    if record.get("state") != "done":
        return Reservation(key, mine, "conflict", record)
    return Reservation(key, mine, "replay", record)


def finish(keys: IdempotencyKeys, reservation: Reservation, response: Response) -> None:
    """Keep the answer for replays, or free the key after a 5xx."""
    if response.status_code >= 500 or response.is_streamed:
        keys.drop(reservation.key)
        return
    record: Record = {
        "fingerprint": reservation.fingerprint,
        "state": "done",
        "status": response.status_code,
        "headers": {
            name: response.headers[name]
            for name in REPLAYED_HEADERS
            if name in response.headers
        },
        "body": base64.b64encode(response.get_data()).decode(),
    }
    keys.put(reservation.key, json.dumps(record))


def replay(record: Record) -> Response:
    """The stored answer, as a new response marked as a replay."""
    response = current_app.response_class(
        base64.b64decode(record.get("body", "")), status=record.get("status", 200)
    )
    for name, value in record.get("headers", {}).items():
        response.headers[name] = value
    response.headers["Idempotent-Replayed"] = "true"
    return response


def refuse(reservation: Reservation) -> NoReturn:
    """409 while the first request runs; 422 naming the header for another request."""
    if reservation.decision == "conflict":
        raise Conflict(
            "A request with this Idempotency-Key is still running; retry later."
        )
    raise RequestValidationError(
        [
            FieldError(
                field=HEADER,
                message="This key was already used for a different request.",
                code="idempotency_key_reused",
            )
        ]
    )


def init_app(app: Flask, store: RedisStore | None) -> IdempotencyKeys:
    keys = IdempotencyKeys(store, app.config["IDEMPOTENCY_TTL"])
    app.extensions[EXTENSION_KEY] = keys
    return keys
