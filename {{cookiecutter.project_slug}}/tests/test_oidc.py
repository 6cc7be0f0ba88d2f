"""Sign-in with OpenID Connect (auth/oidc.py), against a fake provider on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from {{ cookiecutter.package_name }}.config import (
    ConfigError,
    load_config,
    oidc_providers,
    public_url,
)
from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.models import User

from conftest import (
    PASSWORD,
    AppFactory,
    add_account,
    outside_a_window_edge,
    production_settings,
)

CLIENT_ID = "kiln-test-client"
EMAIL = "someone@example.com"


@dataclass
class FakeProvider:
    """An OpenID provider: discovery, keys, and a token endpoint that signs
    whatever claims the test sets (``claims``) with ``key``."""

    url: str = ""
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(65537, 2048)
    )
    claims: dict[str, Any] = field(default_factory=dict)
    # Signs ID tokens instead of ``key`` (whose public half the keys still show).
    forger: rsa.RSAPrivateKey | None = None
    token_requests: int = 0
    down: bool = False
    # Seconds the token endpoint waits; what the discovery document adds.
    token_delay: float = 0.0
    extra_metadata: dict[str, Any] = field(default_factory=dict)
    # The token endpoint answers this (JSON) instead of a token.
    token_answer: Any = None
    # The ID token's header alg ("none": unsigned).
    alg: str = "RS256"

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "jwks_uri": f"{self.url}/jwks",
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            **self.extra_metadata,
        }

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": "fake-1", "use": "sig", "alg": "RS256"}]}

    def token(self) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": CLIENT_ID,
            "sub": "provider-user-1",
            "iat": now,
            "exp": now + 300,
            **self.claims,
        }
        if self.token_answer is not None:
            return self.token_answer  # type: ignore[no-any-return]
        if self.alg == "none":
            id_token = jwt.encode(claims, "", "none", headers={"kid": "fake-1"})
        else:
            signer = self.forger or self.key
            id_token = jwt.encode(claims, signer, "RS256", headers={"kid": "fake-1"})
        return {
            "access_token": "provider-access-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": id_token,
        }


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()

    class Handler(BaseHTTPRequestHandler):
        def answer(self, body: dict[str, Any]) -> None:
            if fake.down:
                self.send_response(503)
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            pages = {
                "/.well-known/openid-configuration": fake.metadata,
                "/jwks": fake.jwks,
            }
            self.answer(pages[self.path]())

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            fake.token_requests += 1
            time.sleep(fake.token_delay)
            self.answer(fake.token())

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def site(make_app: AppFactory, provider: FakeProvider) -> Flask:
    """An app offering the fake provider, with no app context held open."""
    return offering(make_app, provider)


def start(client: FlaskClient, provider: FakeProvider) -> dict[str, str]:
    """Begin a sign-in: the redirect's parameters (state, nonce, ...)."""
    response = client.get("/auth/oidc/fake/login")
    assert response.status_code == 302
    location = urllib.parse.urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == (
        f"{provider.url}/authorize"
    )
    return dict(urllib.parse.parse_qsl(location.query))


def verified(parameters: dict[str, str], email: str = EMAIL) -> dict[str, Any]:
    """ID token claims of a verified address, for the sign-in `parameters` began."""
    return {"email": email, "email_verified": True, "nonce": parameters["nonce"]}


def finish(client: FlaskClient, state: str) -> Any:
    return client.get(f"/auth/oidc/fake/callback?code=the-code&state={state}")


def signed_in(site: Flask, client: FlaskClient, response: Any) -> int:
    """The id of the user `response` signed in, as a session or a token pair."""
    if "web" in site.blueprints:
        assert response.status_code == 302
        assert response.headers["Location"] == "/profile"
        assert client.get("/profile").status_code == 200
    else:
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
        token = response.json["access_token"]
        me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200
    with site.app_context():
        user = db.session.scalar(select(User).where(User.email == EMAIL))
        assert user is not None
        return user.id


def test_a_verified_address_gets_an_account_and_is_signed_in(
    site: Flask, provider: FakeProvider
) -> None:
    client = site.test_client()
    parameters = start(client, provider)
    assert parameters["client_id"] == CLIENT_ID
    assert set(parameters["scope"].split()) == {"openid", "email", "profile"}
    assert parameters["nonce"]
    provider.claims = verified(parameters, EMAIL.upper())
    signed_in(site, client, finish(client, parameters["state"]))
    if "web" in site.blueprints:
        page = site.test_client().get("/login").text
        assert '<a href="/auth/oidc/fake/login">Fake</a>' in page
    # The account has no password: a password sign-in fails like any other.
    wrong = client.post("/api/v1/auth/token", json={"email": EMAIL, "password": "!"})
    assert wrong.status_code == 401


def test_an_existing_account_is_linked_by_its_verified_address(
    site: Flask, provider: FakeProvider
) -> None:
    account = add_account(site, EMAIL)
    client = site.test_client()
    parameters = start(client, provider)
    provider.claims = verified(parameters)
    assert signed_in(site, client, finish(client, parameters["state"])) == account.id
    # Nobody proved the address when the password was set (anyone may have
    # registered it): linking drops the password and the key made with it.
    token = client.post(
        "/api/v1/auth/token", json={"email": EMAIL, "password": PASSWORD}
    )
    assert token.status_code == 401
    assert client.get("/api/v1/auth/me", headers=account.headers).status_code == 401


@pytest.mark.parametrize(
    "claims",
    [
        {"email": EMAIL, "email_verified": False},
        {"email": EMAIL},
        {"email": EMAIL, "email_verified": "true"},
        {"email_verified": True},
    ],
    ids=["unverified", "verification-unsaid", "verified-as-text", "no-address"],
)
def test_only_a_verified_address_links_or_creates(
    site: Flask, provider: FakeProvider, claims: dict[str, Any]
) -> None:
    add_account(site, "other@example.com")
    client = site.test_client()
    parameters = start(client, provider)
    provider.claims = {**claims, "nonce": parameters["nonce"]}
    response = finish(client, parameters["state"])
    assert response.status_code == 403
    with site.app_context():
        assert db.session.scalar(select(User).where(User.email == EMAIL)) is None


def test_a_forged_or_replayed_state_is_refused(
    site: Flask, provider: FakeProvider
) -> None:
    client = site.test_client()
    parameters = start(client, provider)
    provider.claims = verified(parameters)
    assert finish(client, "forged-state").status_code == 400
    # Another browser cannot complete this browser's sign-in.
    assert finish(site.test_client(), parameters["state"]).status_code == 400
    assert provider.token_requests == 0
    signed_in(site, client, finish(client, parameters["state"]))
    # A state works once.
    assert finish(client, parameters["state"]).status_code == 400


@pytest.mark.parametrize(
    "forgery",
    ["wrong-nonce", "wrong-audience", "wrong-issuer", "expired", "other-key"],
)
def test_an_id_token_that_does_not_verify_is_refused(
    site: Flask, provider: FakeProvider, forgery: str
) -> None:
    client = site.test_client()
    parameters = start(client, provider)
    claims: dict[str, Any] = {
        "email": EMAIL,
        "email_verified": True,
        "nonce": parameters["nonce"],
    }
    if forgery == "wrong-nonce":
        claims["nonce"] = "another"
    elif forgery == "wrong-audience":
        claims["aud"] = "someone-else"
    elif forgery == "wrong-issuer":
        claims["iss"] = "https://evil.example"
    elif forgery == "expired":
        claims["exp"] = int(time.time()) - 3600
        claims["iat"] = int(time.time()) - 7200
    else:
        provider.forger = rsa.generate_private_key(65537, 2048)
    provider.claims = claims
    response = finish(client, parameters["state"])
    assert response.status_code == 400
    with site.app_context():
        assert db.session.scalar(select(User).where(User.email == EMAIL)) is None


def test_a_disabled_account_is_not_signed_in(
    site: Flask, provider: FakeProvider
) -> None:
    account = add_account(site, EMAIL)
    with site.app_context():
        db.session.get_one(User, account.id).active = False
        db.session.commit()
    client = site.test_client()
    parameters = start(client, provider)
    provider.claims = verified(parameters)
    assert finish(client, parameters["state"]).status_code == 403


def test_a_provider_that_does_not_answer_is_a_503(
    site: Flask, provider: FakeProvider
) -> None:
    provider.down = True
    response = site.test_client().get("/auth/oidc/fake/login")
    assert response.status_code == 503


def test_unknown_providers_are_not_offered(site: Flask) -> None:
    assert site.test_client().get("/auth/oidc/nobody/login").status_code == 404


def test_providers_come_from_the_environment() -> None:
    found = oidc_providers(
        {
            "OIDC_PROVIDERS": "google, Corp, unset",
            "OIDC_GOOGLE_CLIENT_ID": "g-id",
            "OIDC_GOOGLE_CLIENT_SECRET": "g-secret",
            "OIDC_CORP_CLIENT_ID": "c-id",
            "OIDC_CORP_CLIENT_SECRET": "c-secret",
            "OIDC_CORP_METADATA_URL": "https://id.corp.example/.well-known/openid-configuration",
        }
    )
    assert set(found) == {"google", "corp"}
    assert found["google"]["metadata_url"].startswith("https://accounts.google.com/")
    # Without credentials a provider is simply not offered.
    assert oidc_providers({}) == {}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OIDC_PROVIDERS": "bad name"}, "use letters and digits only"),
        (
            {
                "OIDC_PROVIDERS": "corp",
                "OIDC_CORP_CLIENT_ID": "c",
                "OIDC_CORP_CLIENT_SECRET": "s",
            },
            "OIDC_CORP_METADATA_URL must be the provider's https:// discovery URL",
        ),
        (
            {
                "OIDC_PROVIDERS": "corp",
                "OIDC_CORP_CLIENT_ID": "c",
                "OIDC_CORP_CLIENT_SECRET": "s",
                "OIDC_CORP_METADATA_URL": "http://id.corp.example/",
            },
            "must be the provider's https:// discovery URL",
        ),
    ],
)
def test_bad_provider_settings_are_one_clear_error(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        oidc_providers(environ)


def test_providers_send_the_browser_back_to_public_url_whatever_the_host(
    make_app: AppFactory, provider: FakeProvider
) -> None:
    site = offering(make_app, provider, PUBLIC_URL="https://members.example")
    response = site.test_client().get(
        "/auth/oidc/fake/login", headers={"Host": "evil.example"}
    )
    assert response.status_code == 302
    query = urllib.parse.urlsplit(response.headers["Location"]).query
    assert dict(urllib.parse.parse_qsl(query))["redirect_uri"] == (
        "https://members.example/auth/oidc/fake/callback"
    )


PROVIDER_ENVIRONMENT = {
    "OIDC_PROVIDERS": "google",
    "OIDC_GOOGLE_CLIENT_ID": "g-id",
    "OIDC_GOOGLE_CLIENT_SECRET": "g-secret",
}


@pytest.mark.parametrize(
    ("public", "message"),
    [
        (None, "PUBLIC_URL is not set: OpenID Connect sends sign-ins back to it"),
        ("http://members.example", "must be https:// in production"),
    ],
)
def test_production_with_a_provider_needs_an_https_public_url(
    public: str | None, message: str
) -> None:
    extra = {} if public is None else {"PUBLIC_URL": public}
    config = load_config(
        "production", production_settings(**PROVIDER_ENVIRONMENT, **extra)
    )
    with pytest.raises(ConfigError, match=message):
        config.validate(config.settings())
    fine = load_config(
        "production",
        production_settings(**PROVIDER_ENVIRONMENT, PUBLIC_URL="https://m.example/"),
    )
    fine.validate(fine.settings())
    assert fine.PUBLIC_URL == "https://m.example"


@pytest.mark.parametrize(
    "value",
    [
        "members.example",
        "ftp://members.example",
        "https://members.example/app",
        "https://members.example?next=/",
        "https://user:pw@members.example",
        "https://members.example#top",
    ],
)
def test_public_url_is_an_origin(value: str) -> None:
    with pytest.raises(ConfigError, match=r"PUBLIC_URL=.* is not an origin"):
        public_url({"PUBLIC_URL": value})


def test_a_provider_failing_mid_sign_in_is_no_500(
    site: Flask, provider: FakeProvider
) -> None:
    client = site.test_client()
    parameters = start(client, provider)
    provider.down = True
    response = finish(client, parameters["state"])
    assert response.status_code in {400, 503}
    assert response.mimetype == "application/problem+json"


def test_a_look_alike_address_is_no_other_account(
    site: Flask, provider: FakeProvider
) -> None:
    add_account(site, "user@example.com")
    client = site.test_client()
    parameters = start(client, provider)
    provider.claims = verified(parameters, "\uff55ser@example.com")  # fullwidth u
    assert finish(client, parameters["state"]).status_code == 403
    with site.app_context():
        assert db.session.scalar(select(User).where(User.email == EMAIL)) is None


def test_only_rs256_or_es256_even_if_the_provider_offers_none(
    site: Flask, provider: FakeProvider
) -> None:
    provider.extra_metadata = {
        "id_token_signing_alg_values_supported": ["none", "RS256"]
    }
    provider.alg = "none"
    client = site.test_client()
    parameters = start(client, provider)
    provider.claims = verified(parameters)
    assert finish(client, parameters["state"]).status_code == 400
    with site.app_context():
        assert db.session.scalar(select(User).where(User.email == EMAIL)) is None


def offering(make_app: AppFactory, provider: FakeProvider, **settings: Any) -> Flask:
    return make_app(
        tables=True,
        OIDC_PROVIDERS={
            "fake": {
                "client_id": CLIENT_ID,
                "client_secret": "kiln-test-secret",
                "metadata_url": f"{provider.url}/.well-known/openid-configuration",
            }
        },
        **settings,
    )


def test_a_hanging_provider_is_a_503_within_the_timeout(
    make_app: AppFactory, provider: FakeProvider
) -> None:
    site = offering(make_app, provider, OIDC_TIMEOUT=0.5)
    client = site.test_client()
    parameters = start(client, provider)
    provider.token_delay = 3.0
    began = time.monotonic()
    response = finish(client, parameters["state"])
    assert response.status_code == 503
    assert time.monotonic() - began < 2.5


@pytest.mark.parametrize("answer", [["a", "list"], {"no": "token"}])
def test_a_provider_answer_that_is_not_openid_is_refused(
    site: Flask, provider: FakeProvider, answer: Any
) -> None:
    client = site.test_client()
    parameters = start(client, provider)
    provider.token_answer = answer
    response = finish(client, parameters["state"])
    assert response.status_code in {400, 503}
    assert response.mimetype == "application/problem+json"
    # The next sign-in works: nothing bad was kept.
    provider.token_answer = None
    parameters = start(client, provider)
    provider.claims = verified(parameters)
    signed_in(site, client, finish(client, parameters["state"]))


def test_new_accounts_through_a_provider_count_as_sign_ups(
    make_app: AppFactory, provider: FakeProvider
) -> None:
    site = offering(make_app, provider, RATE_LIMITS_ENABLED=True)
    statuses = []
    # "5 per minute" is a fixed window: six sign-ups must not straddle its end.
    outside_a_window_edge()
    for number in range(6):
        client = site.test_client()
        parameters = start(client, provider)
        provider.claims = verified(parameters, f"new{number}@example.com")
        statuses.append(finish(client, parameters["state"]).status_code)
    assert statuses[-1] == 429
    assert 429 not in statuses[:5]
