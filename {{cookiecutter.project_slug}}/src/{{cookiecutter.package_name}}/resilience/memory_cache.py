"""The in-process cache (no REDIS_URL): Flask-Caching's SimpleCache, counted.

Every read reports a hit or a miss (``events.cache_lookup``), as the Redis
cache's reads do (redis_cache.py).
"""

from __future__ import annotations

from typing import Any

from flask_caching.backends.simplecache import SimpleCache

from . import events


def counted(value: Any) -> Any:
    """Report a read that found `value` (None is a miss) and return it."""
    events.report(events.cache_lookup, hit=value is not None)
    return value


class MemoryCache(SimpleCache):
    """SimpleCache whose reads of one key are counted, as the Redis cache's are.

    Reads of several keys at once (Flask-Caching's memoize reads its version
    keys so) are not: they are bookkeeping, not lookups of a cached value.
    """

    def get(self, key: str) -> Any:
        return counted(super().get(key))

    def get_many(self, *keys: str) -> list[Any]:
        return [super(MemoryCache, self).get(key) for key in keys]
