"""Sign-in with OpenID Connect providers (Authlib), linked by verified e-mail.

OIDC_PROVIDERS in config.py names the providers; one without a client id and
secret in the environment is not offered. The flow is the authorization code
flow with state and nonce (Authlib keeps both in the session and checks the
ID token's signature, issuer, audience, expiry and nonce). An account is
linked by the provider's e-mail address only when the provider says it
verified it (``email_verified``); an address no account has yet gets a new
account, without a password.

With the web UI the sign-in ends in a session, as a password sign-in does;
an API-only service answers the callback with a token pair instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.flask_client import OAuth
from flask import Blueprint, Flask, Response, current_app, url_for
from flask.typing import ResponseReturnValue
from joserfc.errors import JoseError
from werkzeug.exceptions import (
    BadRequest,
    Forbidden,
    NotFound,
    ServiceUnavailable,
)

from ..models import User
from ..resilience import client_address, enforce
from . import users
from .principal import sessions_of
from .schemas import TokenResponse

oidc_bp = Blueprint("oidc", __name__, url_prefix="/auth/oidc")
EXTENSION_KEY = "oidc"
SCOPES = "openid email profile"


def clients() -> OAuth:
    found: OAuth = current_app.extensions[EXTENSION_KEY]
    return found


def client_of(name: str) -> Any:
    """The registered client of provider `name`, or 404."""
    if name not in current_app.config["OIDC_PROVIDERS"]:
        raise NotFound(f"No identity provider {name!r} is offered.")
    return clients().create_client(name)


def offered() -> list[dict[str, str]]:
    """The providers a page can offer: name and sign-in URL."""
    return [
        {"name": name, "url": url_for("oidc.login", name=name)}
        for name in current_app.config["OIDC_PROVIDERS"]
    ]


# Algorithms an ID token may be signed with, whatever the provider's metadata
# offers (it could list "none", which Authlib would then accept).
ID_TOKEN_ALGORITHMS = ("RS256", "ES256")


def pin_algorithms(client: Any) -> None:
    """Load the provider's metadata and keep only ID_TOKEN_ALGORITHMS in it."""
    metadata: dict[str, Any] = client.load_server_metadata()
    offered = metadata.get("id_token_signing_alg_values_supported")
    allowed = [alg for alg in ID_TOKEN_ALGORITHMS if alg in (offered or ())]
    metadata["id_token_signing_alg_values_supported"] = allowed or ["RS256"]


@contextmanager
def talking_to(name: str, client: Any) -> Iterator[None]:
    """Provider failures as 503s; a failed exchange forgets the cached metadata
    and keys, so one bad answer does not stick to the worker."""
    try:
        yield
    except requests.RequestException:
        client.server_metadata.clear()
        raise ServiceUnavailable(
            f"The identity provider {name} did not answer."
        ) from None
    except (ValueError, TypeError, KeyError, RuntimeError):
        # Not JSON, or not the JSON an OpenID provider sends.
        client.server_metadata.clear()
        raise ServiceUnavailable(
            f"The identity provider {name} gave an answer that is not OpenID Connect."
        ) from None


@oidc_bp.after_request
def private(response: Response) -> Response:
    """State, codes and tokens pass through here: no cache keeps any of it."""
    response.headers["Cache-Control"] = "no-store"
    return response


def callback_url(name: str) -> str:
    """Where provider `name` sends the browser back: under PUBLIC_URL, never
    under the request's Host, which a client may forge to collect the code
    (development, with no PUBLIC_URL, takes the request's)."""
    public: str | None = current_app.config["PUBLIC_URL"]
    if public is None:
        return url_for(".callback", name=name, _external=True)
    return public + url_for(".callback", name=name)


@oidc_bp.get("/<name>/login")
def login(name: str) -> ResponseReturnValue:
    """Send the browser to the provider (state and nonce go into the session)."""
    client = client_of(name)
    redirect_uri = callback_url(name)
    with talking_to(name, client):
        pin_algorithms(client)
        response: ResponseReturnValue = client.authorize_redirect(redirect_uri)
    return response


@oidc_bp.get("/<name>/callback")
def callback(name: str) -> ResponseReturnValue:
    """The provider's answer: verify it, find or make the account, sign in."""
    client = client_of(name)
    try:
        with talking_to(name, client):
            pin_algorithms(client)
            token = client.authorize_access_token()
    except OAuthError as error:
        raise BadRequest(f"The sign-in with {name} failed ({error.error}).") from None
    except JoseError as error:
        # The ID token's signature, issuer, audience, expiry or nonce is wrong.
        raise BadRequest(
            f"The ID token of {name} did not verify ({error.error})."
        ) from None
    if not isinstance(token.get("id_token"), str):
        raise BadRequest(f"{name} sent no ID token.")
    user = linked_user(name, token.get("userinfo") or {})
    sessions = sessions_of(current_app)
    if sessions is not None:
        return sessions.start(user)
    pair = users.sign_in(user)
    answer = TokenResponse(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
    )
    return answer.model_dump(), 200


def linked_user(name: str, claims: dict[str, Any]) -> User:
    """The account of the provider's verified address, made or claimed.

    The address must be verified and already in its one spelling (NFKC,
    lowercase): to the provider, admin@example.com with a fullwidth "a" is
    another mailbox, never admin@example.com's. An existing account whose
    password was set before anyone proved the address (this service sends no
    confirmation mail) may be someone else's claim on it: linking drops that
    password and ends every sign-in and API key of the account.
    """
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is not True:
        raise Forbidden(f"{name} did not confirm a verified e-mail address.")
    if users.normalise_email(email) != email.strip().lower():
        raise Forbidden(f"{name} gave an address that is not in its plain form.")
    user = users.find_user(email)
    if user is None:
        enforce("register", identity=client_address())
        try:
            return users.create_user_without_password(email)
        except users.AccountError as refused:
            raise Forbidden(str(refused)) from None
    if not user.active:
        raise Forbidden("This account is disabled.")
    users.claim_for_provider(user)
    return user


def init_app(app: Flask) -> None:
    """Register each provider that has credentials, and the sign-in routes."""
    registry = OAuth(app)
    for name, provider in app.config["OIDC_PROVIDERS"].items():
        registry.register(
            name=name,
            client_id=provider["client_id"],
            client_secret=provider["client_secret"],
            server_metadata_url=provider["metadata_url"],
            client_kwargs={
                "scope": SCOPES,
                # Every request to the provider, discovery and keys included.
                "default_timeout": app.config["OIDC_TIMEOUT"],
            },
        )
    app.extensions[EXTENSION_KEY] = registry
    app.register_blueprint(oidc_bp)
    app.context_processor(lambda: {"oidc_providers": offered()})
