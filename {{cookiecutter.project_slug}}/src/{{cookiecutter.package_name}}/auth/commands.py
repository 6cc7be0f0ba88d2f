"""Account commands: `flask create-user`, `list-users`, `create-api-key`,
`deactivate-user` and `activate-user`."""

from __future__ import annotations

from datetime import timedelta

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import select

from ..extensions import db
from ..models import User
from ..models.user import ROLES, SCOPES
from . import users


@click.command("create-user")
@click.option("--email", required=True, help="The account's e-mail address.")
@click.option(
    "--role",
    "roles",
    type=click.Choice(ROLES),
    multiple=True,
    default=["user"],
    show_default=True,
    help="A role to grant (repeat for several).",
)
@click.password_option(help="Prompted for (twice, not echoed) when not given.")
@with_appcontext
def create_user(email: str, roles: tuple[str, ...], password: str) -> None:
    """Create an active account."""
    try:
        user = users.create_user(email, password, list(roles))
    except users.AccountError as refused:
        raise click.ClickException(str(refused)) from None
    click.echo(
        f"Created user {user.id} <{user.email}> with roles {', '.join(user.roles)}."
    )


@click.command("list-users")
@with_appcontext
def list_users() -> None:
    """List every account: id, e-mail, roles, whether it is active."""
    for user in db.session.scalars(select(User).order_by(User.id)):
        state = "active" if user.active else "disabled"
        click.echo(f"{user.id}\t{user.email}\t{','.join(user.roles)}\t{state}")


@click.command("create-api-key")
@click.option("--email", required=True, help="Whose key it is.")
@click.option("--name", required=True, help="What the key is for.")
@click.option(
    "--scope",
    "scopes",
    type=click.Choice(SCOPES),
    multiple=True,
    default=["read"],
    show_default=True,
    help="A scope to grant (repeat for several).",
)
@click.option(
    "--expires-in-days",
    type=click.IntRange(min=1),
    help="Days until the key expires (default API_KEY_TTL_DAYS, at most "
    "API_KEY_MAX_TTL_DAYS).",
)
@with_appcontext
def create_api_key(
    email: str, name: str, scopes: tuple[str, ...], expires_in_days: int | None
) -> None:
    """Create an API key and print it: the only time it is shown."""
    user = find(email)
    days = expires_in_days or current_app.config["API_KEY_TTL_DAYS"]
    longest = current_app.config["API_KEY_MAX_TTL_DAYS"]
    if days > longest:
        raise click.ClickException(f"A key may live at most {longest} days.")
    try:
        key, plain = users.create_api_key(
            user, name, list(scopes), timedelta(days=days)
        )
    except users.TooManyKeys as refused:
        raise click.ClickException(str(refused)) from None
    click.echo(
        f"Created API key {key.prefix} ({', '.join(key.scopes)}) for {user.email}, "
        f"expiring {key.expires_at:%Y-%m-%d %H:%M} UTC:",
        err=True,
    )
    click.echo(plain)


@click.command("deactivate-user")
@click.option("--email", required=True, help="The account's e-mail address.")
@with_appcontext
def deactivate_user(email: str) -> None:
    """Disable an account: every session, token and API key of it ends."""
    user = find(email)
    users.set_active(user, active=False)
    click.echo(f"Disabled user {user.id} <{user.email}>; its sign-ins and keys ended.")


@click.command("activate-user")
@click.option("--email", required=True, help="The account's e-mail address.")
@with_appcontext
def activate_user(email: str) -> None:
    """Enable an account again (its old sessions and keys stay ended)."""
    user = find(email)
    users.set_active(user, active=True)
    click.echo(f"Enabled user {user.id} <{user.email}>.")


def find(email: str) -> User:
    user = users.find_user(email)
    if user is None:
        raise click.ClickException(f"No account has the e-mail address {email!r}.")
    return user


def register_commands(app: Flask) -> None:
    for command in (
        create_user,
        list_users,
        create_api_key,
        deactivate_user,
        activate_user,
    ):
        app.cli.add_command(command)
