"""Clients of other services, each guarded by a breaker, timeouts and retries."""
