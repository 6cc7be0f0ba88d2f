"""Account commands: `flask create-user`, `flask list-users`, `flask create-api-key`."""

from __future__ import annotations

import click
from flask import Flask
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
@with_appcontext
def create_api_key(email: str, name: str, scopes: tuple[str, ...]) -> None:
    """Create an API key and print it: the only time it is shown."""
    user = users.find_user(email)
    if user is None:
        raise click.ClickException(f"No account has the e-mail address {email!r}.")
    key, plain = users.create_api_key(user, name, list(scopes))
    click.echo(
        f"Created API key {key.prefix} ({', '.join(key.scopes)}) for {user.email}:",
        err=True,
    )
    click.echo(plain)


def register_commands(app: Flask) -> None:
    for command in (create_user, list_users, create_api_key):
        app.cli.add_command(command)
