"""Tasks about accounts: the welcome e-mail."""

from __future__ import annotations

import logging
import smtplib
from typing import Any

import redis
from celery import Task, shared_task
from celery.utils.time import get_exponential_backoff_interval
from flask import current_app
from sqlalchemy.exc import InterfaceError, OperationalError

from ..extensions import db
from ..models import User
from ..resilience import redis_store
from . import mail

logger = logging.getLogger(__name__)
# The ids a user can have: a users.id is a 32-bit INTEGER on every supported
# database. A task's arguments come from its message, which anyone who can
# write to the broker can send: anything else is refused before any query.
USER_IDS = range(1, 2**31)
# Seconds a "welcome sent" mark is kept: far longer than any redelivery.
SENT_MARK_TTL = 30 * 24 * 60 * 60
# Where an app keeps its marks when there is no Redis to share them in.
MEMORY_MARKS = "welcome_marks"
# Failures that pass: the mail server, the database or Redis not answering now.
TRANSIENT = (
    OSError,
    smtplib.SMTPException,
    OperationalError,
    InterfaceError,
    redis.RedisError,
)

WELCOME = """\
Hello,

your {service} account for {email} is ready. Sign in with this address and
the password you chose.

If you did not sign up, you can ignore this message: nobody can use the
account without that password.
"""


def user_id_of(value: object) -> int | None:
    """`value` if it is a user id: an int (not a bool, not a float such as
    2.5, not a string) in USER_IDS; else None."""
    if type(value) is not int or value not in USER_IDS:
        return None
    return value


def sent_key(user_id: int) -> str:
    return f"mail:welcome:{user_id}"


def memory_marks() -> set[str]:
    """This process's marks (without Redis, one worker process sees them)."""
    marks: set[str] = current_app.extensions.setdefault(MEMORY_MARKS, set())
    return marks


def already_sent(user_id: int) -> bool:
    store = redis_store(current_app)
    if store is None:
        return sent_key(user_id) in memory_marks()
    return store.get(store.key(sent_key(user_id))) is not None


def mark_sent(user_id: int) -> None:
    store = redis_store(current_app)
    if store is None:
        memory_marks().add(sent_key(user_id))
    else:
        store.set(store.key(sent_key(user_id)), "1", ttl=SENT_MARK_TTL)


def retry_delay(retries: int) -> int:
    """Seconds to wait before retry `retries` + 1: exponential (up to 2, 4, 8 s,
    ...), capped at CELERY_RETRY_BACKOFF_MAX, with full jitter so that many
    failed tasks do not come back at the same moment."""
    return int(
        get_exponential_backoff_interval(
            factor=2,
            retries=retries,
            maximum=current_app.config["CELERY_RETRY_BACKOFF_MAX"],
            full_jitter=True,
        )
    )


@shared_task(bind=True, max_retries=8)
def send_welcome_email(self: Task[Any, Any], user_id: int) -> bool:
    """E-mail a new account's owner once; True when a message went out.

    Idempotent: a redelivered task (its first worker died) finds the mark of
    a message already sent and does nothing. A second copy goes out only when
    the first was delivered but not confirmed: the worker died between sending
    and marking, or the server took the message and then did not answer.

    An argument that is no user id (user_id_of) is refused for good: one
    warning, no retry, no mail, no mark.
    """
    checked = user_id_of(user_id)
    if checked is None:
        logger.warning(
            "welcome e-mail not sent: %s is not a user id", repr(user_id)[:64]
        )
        return False
    user_id = checked
    try:
        return welcome(user_id)
    except mail.PermanentMailError as error:
        logger.warning("welcome e-mail of user %s not sent: %s", user_id, error)
        return False
    except TRANSIENT as error:
        # A refused connection, a 4xx answer, a database or Redis that does
        # not answer: try again later.
        delay = retry_delay(self.request.retries)
        logger.info(
            "welcome e-mail of user %s: %r, retry in %s s", user_id, error, delay
        )
        raise self.retry(exc=error, countdown=delay) from error


def welcome(user_id: int) -> bool:
    user = db.session.get(User, user_id)
    if user is None or not user.active:
        logger.info("no welcome e-mail: user %s is gone or inactive", user_id)
        return False
    if already_sent(user_id):
        logger.info("welcome e-mail of user %s was sent already", user_id)
        return False
    email = mail.message(
        user.email,
        f"Welcome to {current_app.config['SERVICE_NAME']}",
        WELCOME.format(service=current_app.config["SERVICE_NAME"], email=user.email),
    )
    mail.send(email)
    mark_sent(user_id)
    logger.info("welcome e-mail sent to user %s", user_id)
    return True
