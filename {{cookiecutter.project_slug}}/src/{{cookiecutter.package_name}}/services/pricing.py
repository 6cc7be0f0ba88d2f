"""The example upstream: a pricing service that knows what each item costs.

``GET {PRICING_URL}/prices/{item_id}`` answers ``{"amount": "12.50",
"currency": "EUR"}``. A price that could be fetched is remembered in the cache
for a day; when the pricing service fails (or its breaker is open), the last
known price is served, marked stale, instead of an error. An answer that is
not such a price is a failure too (counted by the breaker like a 5xx): it is
neither served nor remembered.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from flask import current_app
from pydantic import BaseModel, StringConstraints
from werkzeug.exceptions import ServiceUnavailable

from ..extensions import cache
from ..resilience import BreakerOpen
from .http import UpstreamError, upstream

NAME = "pricing"
LAST_KNOWN_FOR = 24 * 60 * 60
# A plain decimal string: no sign, exponent, NaN or infinity, under 10^12, and
# at most 4 decimal places (the most any ISO 4217 currency has).
AMOUNT = r"^[0-9]{1,12}(\.[0-9]{1,4})?$"
# ISO 4217-shaped: three ASCII capitals, nothing a client could render oddly.
CURRENCY = r"^[A-Z]{3}$"


class UpstreamPrice(BaseModel):
    """What the pricing service must answer; anything else is refused."""

    amount: Annotated[str, StringConstraints(pattern=AMOUNT)]
    currency: Annotated[str, StringConstraints(pattern=CURRENCY)]


class Price(BaseModel):
    """A price as this service reports it."""

    item_id: int
    amount: Decimal
    currency: str
    as_of: datetime
    stale: bool


def cache_key(item_id: int) -> str:
    return f"last-price:{item_id}"


def price_of(item_id: int) -> Price:
    """The item's price from the pricing service, or the last known one."""
    config = current_app.config
    if not config["PRICING_URL"]:
        raise ServiceUnavailable("No pricing service is configured (PRICING_URL).")
    pricing = upstream(NAME, config["PRICING_URL"], config["PRICING_TIMEOUT"])
    try:
        fetched = pricing.request_json(
            "GET", f"/prices/{item_id}", UpstreamPrice.model_validate
        )
    except (UpstreamError, BreakerOpen) as error:
        return last_known(item_id, error)
    price = Price(
        item_id=item_id,
        amount=Decimal(fetched.amount),
        currency=fetched.currency,
        as_of=datetime.now(UTC),
        stale=False,
    )
    cache.set(cache_key(item_id), price.model_dump(mode="json"), timeout=LAST_KNOWN_FOR)
    return price


def last_known(item_id: int, error: Exception) -> Price:
    """The fallback: the last price fetched, or the original error if there is none."""
    current_app.logger.warning("pricing failed for item %s: %r", item_id, error)
    remembered = cache.get(cache_key(item_id))
    if remembered is None:
        if isinstance(error, BreakerOpen):
            raise error
        raise ServiceUnavailable("The pricing service is unavailable.") from error
    return Price.model_validate({**remembered, "stale": True})
