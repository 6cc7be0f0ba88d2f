"""Flask commands of the service (`flask --help` lists them)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .extensions import db
from .models import Item

SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|PRIVATE|_KEY$")
REDACTED = "********"


def redact(name: str, value: Any) -> str:
    """Render a setting for humans, hiding secrets and URL passwords.

    A secret is a text value under a secret-sounding name; a flag or number
    under such a name (JWT_ACCESS_TOKEN_MINUTES) is not one.
    """
    if isinstance(value, str | bytes) and SECRET_NAME.search(name):
        return REDACTED
    if isinstance(value, Mapping):
        # Settings made of settings (OIDC_PROVIDERS' client secrets).
        members = (
            f"{key!r}: {redact(str(key).upper(), member)}"
            for key, member in value.items()
        )
        return "{" + ", ".join(members) + "}"
    text = repr(value)
    if isinstance(value, str) and "://" in value:
        with contextlib.suppress(ArgumentError):
            text = repr(make_url(value).render_as_string(hide_password=True))
    return text


@click.command("show-config")
@with_appcontext
def show_config() -> None:
    """Print the effective settings, with secrets redacted."""
    for name in sorted(current_app.config):
        if name.isupper():
            click.echo(f"{name} = {redact(name, current_app.config[name])}")


@click.command("seed-items")
@click.option(
    "--count",
    type=click.IntRange(1, 1000),
    default=10,
    show_default=True,
    help="How many sample items to add.",
)
@with_appcontext
def seed_items(count: int) -> None:
    """Add sample items, for trying the API locally."""
    db.session.add_all(
        Item(name=f"Sample item {number}", quantity=number)
        for number in range(1, count + 1)
    )
    db.session.commit()
    click.echo(f"Added {count} item(s).")


def register_commands(app: Flask) -> None:
    """Attach the commands to `app.cli`."""
    app.cli.add_command(show_config)
    app.cli.add_command(seed_items)
