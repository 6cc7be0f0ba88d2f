"""The Redis cache backend for Flask-Caching, made safe to lose.

- Values are JSON, not pickle: whoever can write to Redis must not be able to
  run code in the app by planting a pickled object.
- A Redis error is a miss (or a skipped write), never a 500; while Redis is
  down the shared gate skips it altogether (see store.py). Once Redis answers
  again after a skipped write, the cache starts empty rather than stale.
- It uses the app's shared Redis pool and key prefix.

config.py selects it (CACHE_TYPE) when REDIS_URL is set; without Redis the
cache is memory_cache.py's MemoryCache (NullCache under test).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import redis
from cachelib.serializers import RedisSerializer
from flask import Flask
from flask_caching.backends.rediscache import RedisCache

from .memory_cache import counted
from .store import RedisGate, redis_store

T = TypeVar("T")


class JSONSerializer(RedisSerializer):
    """JSON in and out; integers stay plain for Redis's INCRBY."""

    def dumps(self, value: Any, protocol: int = 0) -> bytes:  # noqa: ARG002 - interface
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(self, value: bytes | None) -> Any:
        return None if value is None else json.loads(value)


class SafeRedisCache(RedisCache):
    """Flask-Caching's RedisCache with JSON values and errors turned into misses.

    A write or delete that cannot reach Redis leaves entries there that may be
    stale (a forgotten page, a memoized function's old version). The cache
    remembers that, and empties its keys the next time Redis answers, before
    serving anything from it.
    """

    serializer = JSONSerializer()

    def __init__(self, gate: RedisGate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate
        self._lock = threading.Lock()
        self._missed_writes = False

    @classmethod
    def factory(
        cls,
        app: Flask,
        config: dict[str, Any],
        args: list[Any],  # noqa: ARG003 - Flask-Caching's factory signature
        kwargs: dict[str, Any],
    ) -> SafeRedisCache:
        store = redis_store(app)
        if store is None:
            raise RuntimeError("the Redis cache needs REDIS_URL")
        kwargs.update(
            host=store.client,
            key_prefix=store.key("cache", ""),
            default_timeout=config["CACHE_DEFAULT_TIMEOUT"],
        )
        return cls(store.gate, **kwargs)

    def _safely(self, call: Callable[[], T], fallback: T, *, write: bool) -> T:
        """`call` unless Redis is down; `fallback` then, or if it fails."""
        if not self.gate.is_open():
            self._missed(write=write)
            return fallback
        try:
            if self._missed_writes:
                self._forget_everything()
            result = call()
        except redis.RedisError as error:
            self.gate.failed(error)
            self._missed(write=write)
            return fallback
        self.gate.succeeded()
        return result

    def _missed(self, *, write: bool) -> None:
        if write:
            with self._lock:
                self._missed_writes = True

    def _forget_everything(self) -> None:
        """Delete every key of this cache (SCAN, not KEYS: Redis keeps serving)."""
        with self._lock:
            client = self._write_client
            batch: list[Any] = []
            for key in client.scan_iter(f"{self.key_prefix}*", count=500):
                batch.append(key)
                if len(batch) == 500:
                    client.delete(*batch)
                    batch.clear()
            if batch:
                client.delete(*batch)
            self._missed_writes = False

    def get(self, key: str) -> Any:
        return counted(
            self._safely(
                lambda: super(SafeRedisCache, self).get(key), None, write=False
            )
        )

    def get_many(self, *keys: str) -> list[Any]:
        return self._safely(
            lambda: super(SafeRedisCache, self).get_many(*keys),
            [None] * len(keys),
            write=False,
        )

    def has(self, key: str) -> bool:
        return self._safely(
            lambda: super(SafeRedisCache, self).has(key), fallback=False, write=False
        )

    def set(self, key: str, value: Any, timeout: int | timedelta | None = None) -> Any:
        return self._safely(
            lambda: super(SafeRedisCache, self).set(key, value, timeout),
            fallback=False,
            write=True,
        )

    def set_many(
        self, mapping: dict[str, Any], timeout: int | timedelta | None = None
    ) -> Any:
        return self._safely(
            lambda: super(SafeRedisCache, self).set_many(mapping, timeout),
            [],
            write=True,
        )

    def add(self, key: str, value: Any, timeout: int | timedelta | None = None) -> Any:
        return self._safely(
            lambda: super(SafeRedisCache, self).add(key, value, timeout),
            fallback=False,
            write=True,
        )

    def delete(self, key: str) -> Any:
        return self._safely(
            lambda: super(SafeRedisCache, self).delete(key), fallback=False, write=True
        )

    def delete_many(self, *keys: str) -> Any:
        return self._safely(
            lambda: super(SafeRedisCache, self).delete_many(*keys), [], write=True
        )
