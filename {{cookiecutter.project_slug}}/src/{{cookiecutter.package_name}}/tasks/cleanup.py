"""The periodic cleanup: sign-ins that can no longer be used, and stray keys.

Beat runs ``purge_expired`` every CLEANUP_INTERVAL seconds; ``flask tasks
cleanup`` runs it at once. Running it twice, or on two workers at the same
time, does no harm: each run deletes what is expired when it looks.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TypedDict

from celery import shared_task
from flask import current_app
from sqlalchemy import delete, or_

from ..extensions import db
from ..models import TokenFamily
from ..models.base import utcnow
from ..resilience import redis_store

logger = logging.getLogger(__name__)
# Revoked sign-ins stay this long (for a look at what happened), then go.
REVOKED_KEPT = timedelta(days=1)
SCAN_BATCH = 500


class Purged(TypedDict):
    token_families: int
    idempotency_keys_given_expiry: int


def purge_token_families() -> int:
    """Delete sign-ins past their expiry, or revoked over REVOKED_KEPT ago."""
    now = utcnow()
    result = db.session.execute(
        delete(TokenFamily).where(
            or_(
                TokenFamily.expires_at <= now,
                TokenFamily.revoked_at <= now - REVOKED_KEPT,
            )
        )
    )
    db.session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


def expire_stray_idempotency_keys() -> int:
    """Give an expiry to idempotency records in Redis that have none.

    The service writes every record with IDEMPOTENCY_TTL, so Redis removes them
    by itself; a record without one (restored from a backup, or PERSISTed by
    hand) would stay forever. In-memory records live and expire in each web
    process, out of a worker's reach.
    """
    store = redis_store(current_app)
    if store is None:
        return 0
    ttl = current_app.config["IDEMPOTENCY_TTL"]
    fixed = 0
    pattern = store.key("idempotency", "*")
    for key in store.client.scan_iter(match=pattern, count=SCAN_BATCH):
        # -1: the key exists and has no expiry (-2: it is gone already).
        if store.client.ttl(key) == -1:
            store.client.expire(key, ttl)
            fixed += 1
    return fixed


@shared_task(ignore_result=False)
def purge_expired() -> Purged:
    """Delete expired sign-ins; make sure every idempotency record expires."""
    purged = Purged(
        token_families=purge_token_families(),
        idempotency_keys_given_expiry=expire_stray_idempotency_keys(),
    )
    logger.info(
        "cleanup: %(token_families)s sign-in(s) deleted, "
        "%(idempotency_keys_given_expiry)s idempotency record(s) given an expiry",
        purged,
    )
    return purged
