"""/metrics, for Prometheus: open in development, not public in production.

A scrape is allowed from an address in METRICS_ALLOWED_NETWORKS, or with
``Authorization: Bearer <METRICS_TOKEN>``. Production allows no network by
default: behind a proxy on the same host every request would come from
127.0.0.1. Probes and scrapes are never rate limited nor shed.
"""

from __future__ import annotations

import hmac
import ipaddress

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import Forbidden

from ..resilience import exempt, never_shed
from .metrics import exposition_registry

metrics_bp = exempt(Blueprint("metrics", __name__))
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def has_token() -> bool:
    """The request carries ``Authorization: Bearer <METRICS_TOKEN>``."""
    token: str | None = current_app.config["METRICS_TOKEN"]
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(offered.strip().encode(), token.encode())


def from_allowed_network() -> bool:
    networks: tuple[Network, ...] = current_app.config["METRICS_ALLOWED_NETWORKS"]
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return any(address in network for network in networks)


def may_read_metrics() -> bool:
    """Whether the request may read /metrics (and the probes' details)."""
    return from_allowed_network() or has_token()


@metrics_bp.get("/metrics")
@never_shed
def metrics() -> Response:
    """Every worker's metrics in Prometheus' text format."""
    if not may_read_metrics():
        raise Forbidden(
            "Metrics are served to METRICS_ALLOWED_NETWORKS, or with the "
            "bearer token METRICS_TOKEN."
        )
    return current_app.response_class(
        generate_latest(exposition_registry(current_app)),
        headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
    )
