"""E-mail transports: the log (console), a folder of .eml files, or SMTP.

MAIL_BACKEND picks one. The console writes each message to the log, which suits
development; file keeps one RFC 5322 file per message in MAIL_FILE_DIRECTORY
(relative paths are in the instance folder), for tests and for looking at what
would have been sent; smtp delivers through MAIL_HOST:MAIL_PORT, with
MAIL_SECURITY (none, starttls or tls) and MAIL_USERNAME / MAIL_PASSWORD.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
import uuid
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from pathlib import Path

from flask import current_app

logger = logging.getLogger(__name__)


# Controls (C0, DEL, C1) and Unicode line separators: never in an address.
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# How an RFC 2047 encoded word starts.
ENCODED_WORD = "=?"


class PermanentMailError(Exception):
    """The message cannot be sent, now or later: the server refused it for good
    (a 5xx answer), or its recipient is not one mailbox. Do not retry."""


def recipient(to: str) -> str:
    """`to` if it is exactly one bare mailbox, else PermanentMailError.

    Sign-up accepts nothing else (auth/users.py: valid_email); an address
    stored before it did ("a@x,root", "a<b@x>", "g:b@x;", a control
    character) must not become several recipients or a broken header.
    """
    if (
        UNSAFE.search(to)
        # An RFC 2047 encoded word, which the header decodes into anything,
        # other recipients included ("=?utf-8?q?a=40evil.test=2C?=b@x").
        or ENCODED_WORD in to
        or getaddresses([to]) != [("", to)]
    ):
        raise PermanentMailError("the recipient is not exactly one mailbox")
    return to


def message(to: str, subject: str, body: str) -> EmailMessage:
    """A plain-text message from MAIL_FROM to the one mailbox `to`, dated and
    with a Message-ID."""
    email = EmailMessage()
    email["From"] = current_app.config["MAIL_FROM"]
    try:
        email["To"] = recipient(to)
    except ValueError as error:  # a header the email package cannot write
        raise PermanentMailError("the recipient is not exactly one mailbox") from error
    email["Subject"] = subject
    email["Date"] = formatdate(localtime=False)
    email["Message-ID"] = make_msgid()
    email.set_content(body)
    return email


def send(email: EmailMessage) -> None:
    """Deliver `email` through MAIL_BACKEND.

    Raises PermanentMailError when the server refuses it for good, and
    OSError or smtplib.SMTPException for failures worth retrying.
    """
    backend = current_app.config["MAIL_BACKEND"]
    if backend == "file":
        write_file(email)
    elif backend == "smtp":
        send_smtp(email)
    else:
        logger.info(
            "e-mail (MAIL_BACKEND=console) to %s, subject %r:\n%s",
            email["To"],
            email["Subject"],
            email.get_content(),
        )


def outbox() -> Path:
    """The folder of the file backend (created on first use)."""
    folder = Path(current_app.instance_path, current_app.config["MAIL_FILE_DIRECTORY"])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_file(email: EmailMessage) -> None:
    """Write `email` to the outbox; a reader never sees half a message."""
    folder = outbox()
    name = f"{uuid.uuid4().hex}.eml"
    partial = folder / f".{name}.part"
    partial.write_bytes(email.as_bytes())
    partial.replace(folder / name)


def send_smtp(email: EmailMessage) -> None:
    config = current_app.config
    host, port = config["MAIL_HOST"], config["MAIL_PORT"]
    timeout = config["MAIL_TIMEOUT"]
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if config["MAIL_SECURITY"] == "tls":
        client = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
    else:
        client = smtplib.SMTP(host, port, timeout=timeout)
    with client:
        if config["MAIL_SECURITY"] == "starttls":
            client.starttls(context=context)
        if config["MAIL_USERNAME"]:
            client.login(config["MAIL_USERNAME"], config["MAIL_PASSWORD"] or "")
        try:
            client.send_message(email)
        except smtplib.SMTPRecipientsRefused as error:
            raise PermanentMailError("the server refused every recipient") from error
        except smtplib.SMTPNotSupportedError as error:
            # An address this server cannot carry (SMTPUTF8): no retry helps.
            raise PermanentMailError(f"the server cannot send it: {error}") from error
        except smtplib.SMTPResponseException as error:
            if error.smtp_code >= 500:
                raise PermanentMailError(
                    f"the server refused the message ({error.smtp_code})"
                ) from error
            raise
