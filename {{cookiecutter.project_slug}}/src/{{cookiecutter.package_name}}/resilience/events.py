"""What the resilience parts report, as signals (observability counts them).

Each signal is sent with the current app as its sender.

- ``rate_limited`` (``policy=``): a request was refused with 429.
- ``load_shed``: a request was refused because the worker was at its bound.
- ``idempotent_replay``: a stored answer was replayed for an Idempotency-Key.
- ``breaker_changed`` (``breaker=``, ``state=``): a circuit breaker changed state.
- ``cache_lookup`` (``hit=``): the cache was read.
"""

from __future__ import annotations

from typing import Any

from blinker import NamedSignal, Namespace
from flask import current_app, has_app_context

_signals = Namespace()
rate_limited = _signals.signal("rate-limited")
load_shed = _signals.signal("load-shed")
idempotent_replay = _signals.signal("idempotent-replay")
breaker_changed = _signals.signal("breaker-changed")
cache_lookup = _signals.signal("cache-lookup")


def report(signal: NamedSignal, **details: Any) -> None:
    """Send `signal` from the current app (nothing to do without receivers, or
    outside an app, where no app counts it)."""
    if signal.receivers and has_app_context():
        app = current_app._get_current_object()  # type: ignore[attr-defined]  # noqa: SLF001
        signal.send(app, **details)
