"""Accounts, passwords, tokens, API keys, roles and their limits (auth/)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import select, update

from {{ cookiecutter.package_name }}.auth import api as auth_api
from {{ cookiecutter.package_name }}.auth import attempts, passwords, users
from {{ cookiecutter.package_name }}.auth.keys import (
    DEVELOPMENT_KEY_FILE,
    process_key,
)
from {{ cookiecutter.package_name }}.config import ConfigError
from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.models import (
    ApiKey,
    Item,
    TokenFamily,
    User,
)
from {{ cookiecutter.package_name }}.models.base import utcnow
from {{ cookiecutter.package_name }}.models.user import new_uniquifier

from conftest import PASSWORD, AppFactory, add_account, outside_a_window_edge, problem

AUTH = "/api/v1/auth"
ITEMS = "/api/v1/items"
EMAIL = "writer@example.com"


def sign_in(client: FlaskClient, email: str = EMAIL, password: str = PASSWORD) -> Any:
    return client.post(f"{AUTH}/token", json={"email": email, "password": password})


def tokens_of(client: FlaskClient, email: str = EMAIL) -> dict[str, Any]:
    response = sign_in(client, email)
    assert response.status_code == 200, response.get_data(as_text=True)
    return body(response)


def body(response: Any) -> dict[str, Any]:
    """The JSON object a response carries."""
    found = response.json
    assert isinstance(found, dict), response.get_data(as_text=True)
    return found


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused(response: Any, error: str | None = "invalid_token") -> dict[str, Any]:
    """A 401 problem with the Bearer challenge (naming `error` when given)."""
    document = problem(response, 401)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="api"')
    assert 'ApiKey realm="api"' in challenge
    if error:
        assert f'error="{error}"' in challenge
    return document


# --- Registration and passwords ------------------------------------------------


def test_registration_opens_an_account_with_a_normalised_email(
    anonymous: FlaskClient,
) -> None:
    response = anonymous.post(
        f"{AUTH}/register",
        json={"email": "New.User@Example.COM", "password": PASSWORD},
    )
    assert response.status_code == 201
    assert body(response)["email"] == "new.user@example.com"
    assert body(response)["roles"] == ["user"]
    assert "password" not in response.get_data(as_text=True)
    assert sign_in(anonymous, "NEW.USER@example.com").status_code == 200


def test_one_address_is_one_account_whatever_its_spelling(
    app: Flask, anonymous: FlaskClient
) -> None:
    add_account(app, "jane@example.com")
    for spelling in ("JANE@example.com", "\uff2aane@example.com"):  # fullwidth J
        response = anonymous.post(
            f"{AUTH}/register", json={"email": spelling, "password": PASSWORD}
        )
        problem(response, 409)
    # A fullwidth @ becomes a second @: no address at all.
    odd = anonymous.post(
        f"{AUTH}/register", json={"email": "a\uff20b@example.com", "password": PASSWORD}
    )
    assert problem(odd, 422)["errors"][0]["field"] == "email"
    assert sign_in(anonymous, "a\uff20b@example.com").status_code == 401


def test_a_taken_email_is_a_conflict(app: Flask, anonymous: FlaskClient) -> None:
    add_account(app)
    response = anonymous.post(
        f"{AUTH}/register", json={"email": EMAIL.upper(), "password": PASSWORD}
    )
    assert "exists already" in problem(response, 409)["detail"]


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short-pw", "at least 12 characters"),
        ("password1234", "too common"),
        ("Password123!!", "too common"),
        ("!!Qwertyuiop!!", "too common"),
        ("aaaaaaaaaaaaaaaa", "too common"),
        ("abababababababab", "too common"),
        (" " * 16, "only spaces"),
        ("x" * 1025, "at most 1024"),
    ],
)
def test_weak_passwords_are_refused_naming_the_field(
    anonymous: FlaskClient, password: str, reason: str
) -> None:
    response = anonymous.post(
        f"{AUTH}/register", json={"email": "new@example.com", "password": password}
    )
    document = problem(response, 422)
    assert document["errors"][0]["field"] == "password"
    assert reason in document["errors"][0]["message"]


def test_the_email_is_no_password(app: Flask) -> None:
    with app.test_request_context():
        assert passwords.weakness("jane.doe.smith", email="jane.doe.smith@example.com")
        assert passwords.weakness(
            "jane.doe.smith@example.com", email="jane.doe.smith@example.com"
        )
        assert passwords.weakness(PASSWORD, email="jane@example.com") is None


def test_the_common_list_ships_with_the_package() -> None:
    common = passwords.common_passwords()
    assert {"password", "123456", "qwerty", "iloveyou"} <= common
    assert all(entry == entry.lower() for entry in common)


def test_passwords_are_stored_as_argon2id_hashes(app: Flask) -> None:
    add_account(app)
    user = db.session.scalar(select(User))
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash


def test_a_login_rehashes_when_the_parameters_changed(
    make_app: AppFactory, tmp_path: Path
) -> None:
    shared = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'shared.db'}"}
    app = make_app(tables=True, **shared)
    add_account(app)
    stronger = make_app(PASSWORD_HASH_TIME_COST=2, **shared)
    with stronger.app_context():
        before = db.session.scalar(select(User.password_hash))
        assert before is not None
        assert "t=1," in before
    assert sign_in(stronger.test_client()).status_code == 200
    with stronger.app_context():
        after = db.session.scalar(select(User.password_hash))
        assert after is not None
        assert "t=2," in after
        PasswordHasher().verify(after, PASSWORD)


def test_unknown_email_and_wrong_password_fail_alike(
    app: Flask, anonymous: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_account(app)
    verified: list[str] = []
    real_verify = PasswordHasher.verify

    def counting(self: PasswordHasher, stored: str, password: str) -> bool:
        verified.append(stored)
        return real_verify(self, stored, password)

    monkeypatch.setattr(PasswordHasher, "verify", counting)
    unknown = refused(sign_in(anonymous, "nobody@example.com"), error=None)
    wrong = refused(sign_in(anonymous, password="not the password at all"), error=None)
    assert unknown == wrong
    assert unknown["detail"] == "The e-mail address or the password is not correct."
    # Both checked one argon2 hash with the same parameters (a decoy for the
    # unknown address), so both take the same time.
    assert len(verified) == 2
    assert verified[0].split("$")[3] == verified[1].split("$")[3]


def test_a_disabled_account_cannot_sign_in(app: Flask, anonymous: FlaskClient) -> None:
    account = add_account(app)
    db.session.get_one(User, account.id).active = False
    db.session.commit()
    refused(sign_in(anonymous), error=None)
    refused(anonymous.get(f"{AUTH}/me", headers=account.headers))


# --- Tokens -------------------------------------------------------------------


def test_a_token_pair_signs_the_caller_in(app: Flask, anonymous: FlaskClient) -> None:
    account = add_account(app)
    response = sign_in(anonymous)
    assert response.headers["Cache-Control"] == "no-store"
    pair = body(response)
    assert pair["token_type"] == "Bearer"
    assert pair["expires_in"] == app.config["JWT_ACCESS_TTL"]
    me = anonymous.get(f"{AUTH}/me", headers=bearer(pair["access_token"]))
    assert me.status_code == 200
    assert body(me)["id"] == account.id
    header = jwt.get_unverified_header(pair["access_token"])
    assert header["alg"] == "RS256"
    assert header["kid"] == process_key().kid


def test_refresh_rotates_and_a_reused_token_revokes_the_family(
    app: Flask, anonymous: FlaskClient
) -> None:
    add_account(app)
    first = tokens_of(anonymous)
    rotated = anonymous.post(
        f"{AUTH}/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert rotated.status_code == 200
    second = body(rotated)
    assert second["refresh_token"] != first["refresh_token"]
    assert (
        anonymous.get(f"{AUTH}/me", headers=bearer(second["access_token"])).status_code
        == 200
    )

    # The first refresh token again: someone copied it. The whole sign-in ends.
    reused = anonymous.post(
        f"{AUTH}/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert "used before" in refused(reused)["detail"]
    refused(
        anonymous.post(
            f"{AUTH}/refresh", json={"refresh_token": second["refresh_token"]}
        )
    )
    refused(anonymous.get(f"{AUTH}/me", headers=bearer(second["access_token"])))
    # Other sign-ins of the same account are untouched.
    other = tokens_of(anonymous)
    assert (
        anonymous.get(f"{AUTH}/me", headers=bearer(other["access_token"])).status_code
        == 200
    )


def test_logout_revokes_the_sign_in(app: Flask, anonymous: FlaskClient) -> None:
    add_account(app)
    pair = tokens_of(anonymous)
    logout = anonymous.post(
        f"{AUTH}/logout", json={"refresh_token": pair["refresh_token"]}
    )
    assert logout.status_code == 204
    refused(anonymous.get(f"{AUTH}/me", headers=bearer(pair["access_token"])))
    refused(
        anonymous.post(f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]})
    )
    family = db.session.scalar(select(TokenFamily))
    assert family is not None
    assert family.revoked_at is not None


def test_revocation_is_shared_by_every_worker(
    make_app: AppFactory, tmp_path: Path
) -> None:
    # Two apps on one database stand for two workers (or a restart).
    shared = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'shared.db'}"}
    first = make_app(tables=True, **shared)
    second = make_app(**shared)
    add_account(first)
    pair = tokens_of(first.test_client())
    headers = bearer(pair["access_token"])
    assert second.test_client().get(f"{AUTH}/me", headers=headers).status_code == 200
    first.test_client().post(
        f"{AUTH}/logout", json={"refresh_token": pair["refresh_token"]}
    )
    refused(second.test_client().get(f"{AUTH}/me", headers=headers))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def unsigned(claims: dict[str, Any]) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}."


def signed_with_public_key(claims: dict[str, Any]) -> str:
    """HS256 with the RSA public key as the secret: the classic key confusion."""
    public = process_key().public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    signature = hmac.new(
        public, f"{header}.{payload}".encode(), hashlib.sha256
    ).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def resigned(claims: dict[str, Any], **changes: Any) -> str:
    """The claims, changed, and signed with the real key: only the claims lie."""
    return jwt.encode({**claims, **changes}, process_key().private, algorithm="RS256")


def tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "2"
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


ATTACKS = {
    "alg-none": lambda t: unsigned(claims_of(t)),
    "hs256-with-the-public-key": lambda t: signed_with_public_key(claims_of(t)),
    "expired": lambda t: resigned(
        claims_of(t),
        exp=int(time.time()) - 3600,
        iat=int(time.time()) - 7200,
        nbf=int(time.time()) - 7200,
    ),
    "tampered": tampered,
    "wrong-audience": lambda t: resigned(claims_of(t), aud="another-service"),
    "wrong-issuer": lambda t: resigned(claims_of(t), iss="https://evil.example"),
    "no-expiry": lambda t: resigned(
        {k: v for k, v in claims_of(t).items() if k != "exp"}
    ),
    "not-yet-valid": lambda t: resigned(claims_of(t), nbf=int(time.time()) + 3600),
    "issued-in-the-future": lambda t: resigned(
        claims_of(t), iat=int(time.time()) + 3600
    ),
    "refresh-as-access": None,
    "garbage": lambda _: "not.a.token",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_forged_and_misused_access_tokens_are_401s(
    app: Flask, anonymous: FlaskClient, attack: str
) -> None:
    add_account(app)
    add_account(app, "victim@example.com")
    pair = tokens_of(anonymous)
    forge = ATTACKS[attack]
    token = pair["refresh_token"] if forge is None else forge(pair["access_token"])
    response = anonymous.get(f"{AUTH}/me", headers=bearer(token))
    refused(response)
    write = anonymous.post(ITEMS, json={"name": "x"}, headers=bearer(token))
    refused(write)


def test_an_access_token_is_no_refresh_token(
    app: Flask, anonymous: FlaskClient
) -> None:
    add_account(app)
    pair = tokens_of(anonymous)
    response = anonymous.post(
        f"{AUTH}/refresh", json={"refresh_token": pair["access_token"]}
    )
    assert refused(response)["detail"] == "This is not a refresh token."


@pytest.mark.parametrize(
    "header",
    ["Basic d3JpdGVyOnB3", "Bearer", "Bearer    ", "Token abc"],
)
@pytest.mark.usefixtures("app")
def test_other_schemes_are_refused(anonymous: FlaskClient, header: str) -> None:
    response = anonymous.post(
        ITEMS, json={"name": "x"}, headers={"Authorization": header}
    )
    refused(response)


def test_one_credential_at_a_time(app: Flask, anonymous: FlaskClient) -> None:
    account = add_account(app)
    pair = tokens_of(anonymous)
    both = bearer(pair["access_token"]) | account.headers
    assert (
        "one credential" in refused(anonymous.get(f"{AUTH}/me", headers=both))["detail"]
    )


def test_a_password_change_ends_every_other_sign_in(
    app: Flask, anonymous: FlaskClient
) -> None:
    add_account(app)
    elsewhere = tokens_of(anonymous)
    here = tokens_of(anonymous)
    new_password = "a-brand-new-passphrase-42"
    changed = anonymous.post(
        f"{AUTH}/password",
        json={"current_password": PASSWORD, "new_password": new_password},
        headers=bearer(here["access_token"]),
    )
    assert changed.status_code == 204
    for pair in (elsewhere, here):
        refused(anonymous.get(f"{AUTH}/me", headers=bearer(pair["access_token"])))
        refused(
            anonymous.post(
                f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]}
            )
        )
    refused(sign_in(anonymous), error=None)
    assert sign_in(anonymous, password=new_password).status_code == 200


def test_a_password_change_needs_the_current_password(
    app: Flask, anonymous: FlaskClient
) -> None:
    add_account(app)
    pair = tokens_of(anonymous)
    response = anonymous.post(
        f"{AUTH}/password",
        json={
            "current_password": "wrong-wrong-wrong",
            "new_password": "another-good-one-77",
        },
        headers=bearer(pair["access_token"]),
    )
    assert problem(response, 422)["errors"][0]["field"] == "current_password"
    weak = anonymous.post(
        f"{AUTH}/password",
        json={"current_password": PASSWORD, "new_password": "password1234"},
        headers=bearer(pair["access_token"]),
    )
    assert problem(weak, 422)["errors"][0]["field"] == "new_password"


# --- Keys ---------------------------------------------------------------------


def test_development_keys_are_made_once_into_the_instance_folder(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.delenv("JWT_PRIVATE_KEY", raising=False)
    monkeypatch.delenv("JWT_PRIVATE_KEY_FILE", raising=False)
    first = make_app("development", SQLALCHEMY_DATABASE_URI="sqlite://")
    key_file = tmp_path / "instance" / DEVELOPMENT_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = make_app("development", SQLALCHEMY_DATABASE_URI="sqlite://")
    assert first.extensions["auth_keys"].kid == second.extensions["auth_keys"].kid


def test_a_configured_key_is_used(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pem = process_key().private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "signing.pem"
    path.write_bytes(pem)
    monkeypatch.setenv("JWT_PRIVATE_KEY_FILE", str(path))
    app = make_app("development", SQLALCHEMY_DATABASE_URI="sqlite://")
    assert app.extensions["auth_keys"].kid == process_key().kid


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        (b"not a key", "is not an unencrypted PEM private key"),
        (None, "cannot be read"),
    ],
)
def test_a_bad_key_file_is_a_clear_error(
    make_app: AppFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    contents: bytes | None,
    message: str,
) -> None:
    path = tmp_path / "signing.pem"
    if contents is not None:
        path.write_bytes(contents)
    monkeypatch.setenv("JWT_PRIVATE_KEY_FILE", str(path))
    with pytest.raises(
        ConfigError, match=rf"^JWT_PRIVATE_KEY_FILE \({path}\) {message}"
    ):
        make_app()


# --- API keys -----------------------------------------------------------------


def test_an_api_key_is_shown_once_and_stored_as_a_hash(
    app: Flask, anonymous: FlaskClient
) -> None:
    add_account(app)
    pair = tokens_of(anonymous)
    created = anonymous.post(
        f"{AUTH}/api-keys",
        json={"name": "ci", "scopes": ["read"]},
        headers=bearer(pair["access_token"]),
    )
    assert created.status_code == 201
    assert created.headers["Cache-Control"] == "no-store"
    plain = body(created)["key"]
    assert plain.startswith(f"ak_{body(created)['prefix']}_")
    stored = db.session.scalar(
        select(ApiKey).where(ApiKey.prefix == body(created)["prefix"])
    )
    assert stored is not None
    assert plain not in (stored.secret_hash, stored.prefix)
    listed = anonymous.get(f"{AUTH}/api-keys", headers=bearer(pair["access_token"]))
    assert listed.status_code == 200
    assert plain not in listed.get_data(as_text=True)
    assert [key["name"] for key in body(listed)["api_keys"]] == ["ci", "tests"]


def test_a_key_does_what_its_scopes_allow(app: Flask, anonymous: FlaskClient) -> None:
    reader = add_account(app, scopes=("read",))
    assert anonymous.get(ITEMS, headers=reader.headers).status_code == 200
    denied = anonymous.post(ITEMS, json={"name": "x"}, headers=reader.headers)
    assert problem(denied, 403)["detail"] == "This needs the write scope."


def test_a_revoked_key_stops_working(app: Flask, anonymous: FlaskClient) -> None:
    account = add_account(app)
    pair = tokens_of(anonymous)
    key_id = db.session.scalar(select(ApiKey.id))
    assert (
        anonymous.post(ITEMS, json={"name": "x"}, headers=account.headers).status_code
        == 201
    )
    revoked = anonymous.delete(
        f"{AUTH}/api-keys/{key_id}", headers=bearer(pair["access_token"])
    )
    assert revoked.status_code == 204
    response = anonymous.post(ITEMS, json={"name": "x"}, headers=account.headers)
    assert refused(response)["detail"] == "The API key is not valid."


def test_last_use_is_recorded(app: Flask, anonymous: FlaskClient) -> None:
    account = add_account(app)
    key = db.session.scalar(select(ApiKey))
    assert key is not None
    assert key.last_used_at is None
    anonymous.get(f"{AUTH}/me", headers=account.headers)
    db.session.expire_all()
    assert key.last_used_at is not None


@pytest.mark.parametrize(
    "forged",
    ["ak_", "ak_short_secret", "xx_0123456789ab_secret", "ak_0123456789ab_"],
)
def test_malformed_and_unknown_keys_are_refused(
    app: Flask, anonymous: FlaskClient, forged: str
) -> None:
    account = add_account(app)
    prefix = account.api_key.split("_")[1]
    for key in (forged, f"ak_{prefix}_wrong-secret"):
        refused(anonymous.post(ITEMS, json={"name": "x"}, headers={"X-API-Key": key}))


def test_keys_manage_no_accounts(app: Flask, anonymous: FlaskClient) -> None:
    account = add_account(app)
    for method, path in [("get", "api-keys"), ("post", "password")]:
        response = getattr(anonymous, method)(
            f"{AUTH}/{path}",
            json={"current_password": PASSWORD, "new_password": "another-good-one-77"},
            headers=account.headers,
        )
        assert "An API key cannot do this" in problem(response, 403)["detail"]


def test_only_owners_and_admins_revoke_a_key(
    app: Flask, anonymous: FlaskClient
) -> None:
    add_account(app)
    add_account(app, "other@example.com")
    add_account(app, "admin@example.com", roles=("admin", "user"))
    victim = db.session.scalar(select(ApiKey.id).order_by(ApiKey.id))
    other = tokens_of(anonymous, "other@example.com")
    response = anonymous.delete(
        f"{AUTH}/api-keys/{victim}", headers=bearer(other["access_token"])
    )
    problem(response, 404)
    admin = tokens_of(anonymous, "admin@example.com")
    response = anonymous.delete(
        f"{AUTH}/api-keys/{victim}", headers=bearer(admin["access_token"])
    )
    assert response.status_code == 204


# --- Roles and the items API --------------------------------------------------


def test_writes_need_authentication_and_reads_do_not(anonymous: FlaskClient) -> None:
    assert anonymous.get(ITEMS).status_code == 200
    for method, path in [
        ("post", ITEMS),
        ("patch", f"{ITEMS}/1"),
        ("delete", f"{ITEMS}/1"),
    ]:
        response = getattr(anonymous, method)(path, json={"name": "x"})
        document = refused(response, error=None)
        assert document["detail"].startswith("Authentication is required")


def test_admin_only_views_refuse_other_roles(
    app: Flask, anonymous: FlaskClient
) -> None:
    user = add_account(app)
    admin = add_account(app, "admin@example.com", roles=("admin", "user"))
    denied = anonymous.get(f"{AUTH}/users", headers=user.headers)
    assert problem(denied, 403)["detail"] == "This needs the admin role."
    listed = anonymous.get(f"{AUTH}/users", headers=admin.headers)
    assert listed.status_code == 200
    assert [entry["email"] for entry in body(listed)["users"]] == [
        EMAIL,
        "admin@example.com",
    ]


def test_require_knows_its_scopes() -> None:
    from {{ cookiecutter.package_name }}.auth import require  # noqa: PLC0415

    with pytest.raises(ValueError, match="unknown scope 'admin'"):
        require(scope="admin")


def test_an_idempotent_replay_answers_only_who_may_make_the_request(
    app: Flask, anonymous: FlaskClient
) -> None:
    reader = add_account(app, scopes=("read",))
    token = bearer(tokens_of(anonymous)["access_token"])
    once = {"Idempotency-Key": "K"}
    first = anonymous.post(ITEMS, json={"name": "once"}, headers={**token, **once})
    assert first.status_code == 201
    # The same user's key that may only read, sending the same key and body,
    # is refused as a fresh write from it is, and learns nothing of the answer.
    again = anonymous.post(
        ITEMS, json={"name": "once"}, headers={**reader.headers, **once}
    )
    assert "write scope" in problem(again, 403)["detail"]
    assert "Idempotent-Replayed" not in again.headers
    # The caller who made it still gets its answer again.
    replayed = anonymous.post(ITEMS, json={"name": "once"}, headers={**token, **once})
    assert replayed.status_code == 201
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.json == first.json


# --- Limits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("into_the_hour", "waits"),
    [(3595.0, [5.5]), (1855.0, [5.5]), (1830.0, []), (0.5, [])],
)
def test_limit_tests_keep_clear_of_the_hour_and_the_minute_edges(
    monkeypatch: pytest.MonkeyPatch, into_the_hour: float, waits: list[float]
) -> None:
    # Fixed windows start again at each hour and minute: a test of a limit
    # that straddles the edge sees its counts reset. outside_a_window_edge
    # waits past the edge (minutes too) only when it is close, and briefly.
    clock = [1_800_000_000 - 1_800_000_000 % 3600 + into_the_hour]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(time, "time", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", sleep)
    outside_a_window_edge(3600, margin=10)
    assert slept == pytest.approx(waits)


def test_sign_in_is_limited_per_client(make_app: AppFactory) -> None:
    outside_a_window_edge(margin=5)  # the counts must not reset mid-test
    app = make_app(RATE_LIMITS_ENABLED=True, tables=True)
    add_account(app)
    client = app.test_client()
    for number in range(5):
        response = sign_in(client, f"nobody{number}@example.com")
        assert response.status_code == 401
    limited = sign_in(client)
    problem(limited, 429)
    assert int(limited.headers["Retry-After"]) > 0


def sign_in_from(
    client: FlaskClient, address: str, password: str, email: str = EMAIL
) -> Any:
    return client.post(
        f"{AUTH}/token",
        json={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": address},
    )


@pytest.mark.parametrize("roles", [("user",), ("admin", "user")])
def test_wrong_passwords_from_one_address_do_not_lock_the_owner_out(
    make_app: AppFactory, roles: tuple[str, ...]
) -> None:
    outside_a_window_edge(margin=5)  # the counts must not reset mid-test
    app = make_app(RATE_LIMITS_ENABLED=True, tables=True)
    add_account(app, roles=roles)
    attacker = app.test_client()
    for number in range(5):
        guess = sign_in_from(attacker, "203.0.113.66", f"guess number {number}")
        assert guess.status_code == 401
    # The attacker's address is spent, the account is not: the owner, from
    # another address, signs in (this was a 429 for a minute, renewable).
    problem(sign_in_from(attacker, "203.0.113.66", PASSWORD), 429)
    owner = app.test_client()
    assert sign_in_from(owner, "198.51.100.7", PASSWORD).status_code == 200


def test_an_account_is_guarded_against_many_addresses_but_not_from_its_owner(
    make_app: AppFactory,
) -> None:
    policies = {
        **app_policies(),
        "login-account": {"limit": "3 per hour"},
    }
    outside_a_window_edge(3600, margin=5)  # the counts must not reset mid-test
    app = make_app(RATE_LIMITS_ENABLED=True, RESILIENCE_POLICIES=policies, tables=True)
    add_account(app)
    owner = app.test_client()
    # The owner signed in on this client before: its answer set the cookie.
    first = sign_in_from(owner, "198.51.100.7", PASSWORD)
    assert first.status_code == 200
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith(f"{attempts.DEVICE_COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    # Guesses from many addresses spend the account's shared limit (each
    # address stays under its own): now strangers are refused, right or wrong.
    stranger = app.test_client()
    for number in range(2):
        guess = sign_in_from(stranger, f"192.0.2.{number + 1}", "a wrong guess")
        assert guess.status_code == 401
    limited = sign_in_from(stranger, "192.0.2.50", PASSWORD)
    problem(limited, 429)
    assert limited.headers["RateLimit-Limit"] == "3"
    # The owner's client is known to the account: it counts on its own.
    again = sign_in_from(owner, "198.51.100.8", PASSWORD)
    assert again.status_code == 200
    # A known client is counted too (5 a minute), but never with strangers.
    for _ in range(4):
        sign_in_from(owner, "198.51.100.9", "a typo of the owner")
    problem(sign_in_from(owner, "198.51.100.10", PASSWORD), 429)


def test_a_password_change_makes_every_known_device_a_stranger(
    make_app: AppFactory,
) -> None:
    policies = {**app_policies(), "login-account": {"limit": "3 per hour"}}
    outside_a_window_edge(3600, margin=5)  # the counts must not reset mid-test
    app = make_app(RATE_LIMITS_ENABLED=True, RESILIENCE_POLICIES=policies, tables=True)
    add_account(app)
    # A client that signed in with the old password (the owner's, or a thief's).
    old = app.test_client()
    first = sign_in_from(old, "198.51.100.7", PASSWORD)
    assert first.status_code == 200
    owner = app.test_client()
    changed = owner.post(
        f"{AUTH}/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(body(first)["access_token"]),
        environ_base={"REMOTE_ADDR": "198.51.100.20"},
    )
    assert changed.status_code == 204
    # Strangers spend the account's shared limit (the first sign-in took one).
    stranger = app.test_client()
    for number in range(2):
        guess = sign_in_from(stranger, f"192.0.2.{number + 1}", "a wrong guess")
        assert guess.status_code == 401
    # The old cookie names the account as it was: its client is a stranger
    # now, refused with the others, right password or not.
    problem(sign_in_from(old, "198.51.100.8", NEW_PASSWORD), 429)
    problem(sign_in_from(old, "198.51.100.9", PASSWORD), 429)


class Backdated(TimestampSigner):
    """Signs as if it were a day more than a known device lives ago."""

    def get_timestamp(self) -> int:
        return int(time.time()) - attempts.DEVICE_LIFETIME - 24 * 3600


@pytest.mark.parametrize("cookie", ["forged", "another account", "expired"])
def test_only_a_genuine_recent_cookie_of_the_account_makes_a_client_known(
    make_app: AppFactory, cookie: str
) -> None:
    policies = {**app_policies(), "login-account": {"limit": "1 per hour"}}
    outside_a_window_edge(3600, margin=5)  # the counts must not reset mid-test
    app = make_app(RATE_LIMITS_ENABLED=True, RESILIENCE_POLICIES=policies, tables=True)
    add_account(app)
    add_account(app, "other@example.com")
    client = app.test_client()
    if cookie == "another account":
        sign_in_from(client, "198.51.100.1", PASSWORD, "other@example.com")
    elif cookie == "expired":
        with app.app_context():
            uniquifier = attempts.current_uniquifier(EMAIL)
            assert uniquifier is not None
            claims = {
                "device": "old",
                "account": attempts.account_tag(EMAIL, uniquifier),
            }
            old = URLSafeTimedSerializer(
                app.secret_key or "", salt=attempts.SALT, signer=Backdated
            ).dumps(claims)
        client.set_cookie(attempts.DEVICE_COOKIE, old)
    else:
        client.set_cookie(attempts.DEVICE_COOKIE, "eyJkZXZpY2UiOiJ4In0.forged.sig")
    # The client is a stranger to the account: the shared limit (1) applies.
    assert sign_in_from(client, "198.51.100.2", "a wrong guess").status_code == 401
    problem(sign_in_from(client, "198.51.100.3", PASSWORD), 429)


# --- CLI ----------------------------------------------------------------------


def test_create_user_prompts_for_the_password(runner: FlaskCliRunner) -> None:
    result = runner.invoke(
        args=[
            "create-user",
            "--email",
            "Admin@Example.com",
            "--role",
            "admin",
            "--role",
            "user",
        ],
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert "with roles admin, user" in result.output
    user = users.find_user("admin@example.com")
    assert user is not None
    assert user.roles == ["admin", "user"]
    listed = runner.invoke(args=["list-users"])
    assert "admin@example.com\tadmin,user\tactive" in listed.output


def test_create_user_refuses_a_weak_password(runner: FlaskCliRunner) -> None:
    result = runner.invoke(
        args=["create-user", "--email", "a@example.com"], input="password\npassword\n"
    )
    assert result.exit_code == 1
    assert "at least 12 characters" in result.output


def test_create_api_key_prints_the_key_once(app: Flask, runner: FlaskCliRunner) -> None:
    add_account(app)
    result = runner.invoke(
        args=[
            "create-api-key",
            "--email",
            EMAIL,
            "--name",
            "deploy",
            "--scope",
            "write",
        ]
    )
    assert result.exit_code == 0, result.output
    plain = result.stdout.strip()
    assert users.check_api_key(plain) is not None
    missing = runner.invoke(
        args=["create-api-key", "--email", "no@example.com", "--name", "x"]
    )
    assert missing.exit_code == 1
    assert "No account has the e-mail address" in missing.output


# --- Edges ----------------------------------------------------------------------


def test_a_key_made_meanwhile_by_another_process_is_the_one_used(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.delenv("JWT_PRIVATE_KEY", raising=False)
    monkeypatch.delenv("JWT_PRIVATE_KEY_FILE", raising=False)
    first = make_app("development", SQLALCHEMY_DATABASE_URI="sqlite://")
    # The check for the file says "none yet", as in a race with another worker.
    monkeypatch.setattr(Path, "exists", lambda _: False)
    second = make_app("development", SQLALCHEMY_DATABASE_URI="sqlite://")
    assert first.extensions["auth_keys"].kid == second.extensions["auth_keys"].kid


def test_a_broken_development_key_is_a_clear_error(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    monkeypatch.delenv("JWT_PRIVATE_KEY", raising=False)
    monkeypatch.delenv("JWT_PRIVATE_KEY_FILE", raising=False)
    (tmp_path / DEVELOPMENT_KEY_FILE).write_text("truncated")
    with pytest.raises(ConfigError, match="is not an unencrypted PEM private key"):
        make_app("development", SQLALCHEMY_DATABASE_URI="sqlite://")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (ec.generate_private_key(ec.SECP256R1()), "is not an RSA key"),
        (rsa.generate_private_key(65537, 1024), "has 1024 bits"),  # noqa: S505
    ],
    ids=["elliptic-curve", "short-rsa"],
)
def test_unfit_signing_keys_are_refused(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, key: Any, message: str
) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    monkeypatch.setenv("JWT_PRIVATE_KEY", pem.decode())
    with pytest.raises(ConfigError, match=rf"^JWT_PRIVATE_KEY {message}"):
        make_app()


def test_a_disabled_account_cannot_refresh(app: Flask, anonymous: FlaskClient) -> None:
    account = add_account(app)
    pair = tokens_of(anonymous)
    db.session.get_one(User, account.id).active = False
    db.session.commit()
    response = anonymous.post(
        f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]}
    )
    assert refused(response)["detail"] == "The account of this token is disabled."


@pytest.mark.parametrize("subject", ["abc", "1" * 19, 1])
def test_a_signed_token_with_an_odd_subject_is_refused(
    app: Flask, anonymous: FlaskClient, subject: object
) -> None:
    add_account(app)
    pair = tokens_of(anonymous)
    token = resigned(claims_of(pair["access_token"]), sub=subject)
    refused(anonymous.get(f"{AUTH}/me", headers=bearer(token)))


def app_policies(**limits: str) -> dict[str, dict[str, Any]]:
    """The auth policies, with the given limits, and read and write."""
    return {
        "read": {"limit": limits.get("read", "300 per minute")},
        "write": {"limit": "60 per minute", "idempotency": True},
        "login": {"limit": limits.get("login", "5 per minute")},
        "login-account": {"limit": limits.get("login_account", "100 per hour")},
        "register": {"limit": limits.get("register", "5 per minute")},
        "register-mailbox": {"limit": limits.get("register_mailbox", "100 per hour")},
        "auth": {"limit": "60 per minute"},
    }


def test_a_token_caller_has_a_quota_of_their_own(make_app: AppFactory) -> None:
    policies = app_policies(read="1 per minute", login="60 per minute")
    outside_a_window_edge(margin=5)  # the counts must not reset mid-test
    app = make_app(RATE_LIMITS_ENABLED=True, RESILIENCE_POLICIES=policies, tables=True)
    add_account(app)
    client = app.test_client()
    pair = tokens_of(client)
    assert client.get(ITEMS, headers=bearer(pair["access_token"])).status_code == 200
    # The address still has its own quota; the token's is spent.
    assert client.get(ITEMS).status_code == 200
    problem(client.get(ITEMS, headers=bearer(pair["access_token"])), 429)


def test_api_keys_bring_no_sign_in_quota_of_their_own(make_app: AppFactory) -> None:
    outside_a_window_edge(margin=5)  # the counts must not reset mid-test
    app = make_app(RATE_LIMITS_ENABLED=True, tables=True)
    keys = [add_account(app, f"sprayer{number}@example.com") for number in range(2)]
    client = app.test_client()
    for number in range(5):
        key = keys[number % 2].headers
        guess = {"email": f"victim{number}@example.com", "password": "some guess here"}
        assert client.post(f"{AUTH}/token", json=guess, headers=key).status_code == 401
    # The address has spent its five attempts, whichever keys came with them.
    limited = client.post(
        f"{AUTH}/token",
        json={"email": "victim9@example.com", "password": "some guess here"},
        headers=keys[1].headers,
    )
    problem(limited, 429)


def test_a_429_tells_the_limit_that_refused(make_app: AppFactory) -> None:
    policies = app_policies(login_account="5 per minute")
    outside_a_window_edge(margin=5)  # the counts must not reset mid-test
    app = make_app(RATE_LIMITS_ENABLED=True, RESILIENCE_POLICIES=policies, tables=True)
    add_account(app)
    client = app.test_client()
    for number in range(5):
        address = {"REMOTE_ADDR": f"192.0.2.{number + 1}"}
        client.post(
            f"{AUTH}/token",
            json={"email": EMAIL, "password": "wrong guess one"},
            environ_base=address,
        )
    limited = client.post(
        f"{AUTH}/token",
        json={"email": EMAIL, "password": "wrong guess one"},
        environ_base={"REMOTE_ADDR": "192.0.2.99"},
    )
    problem(limited, 429)
    assert limited.headers["RateLimit-Remaining"] == "0"
    assert limited.headers["RateLimit-Limit"] == "5"


def test_the_local_part_with_digits_and_symbols_is_no_password(app: Flask) -> None:
    with app.test_request_context():
        assert passwords.weakness("weak4!!!!!!!!!!!", email="weak4@example.com")
        assert passwords.weakness("2024weak4!!!!!!!", email="weak4@example.com")


def test_the_email_as_password_is_reported_on_the_password(
    anonymous: FlaskClient,
) -> None:
    email = "weak3@example.com"
    response = anonymous.post(
        f"{AUTH}/register", json={"email": email, "password": email}
    )
    assert problem(response, 422)["errors"][0]["field"] == "password"


def test_a_credential_the_database_cannot_check_counts_as_the_address(
    make_app: AppFactory, tmp_path: Path
) -> None:
    # The database is gone: the rate limiter counts the caller by address, and
    # a view that needs the database answers 503 (not a 500, not a hang).
    app = make_app(
        RATE_LIMITS_ENABLED=True,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/gone/app.db",
    )
    client = app.test_client()
    key = {"X-API-Key": "ak_0123456789ab_not-a-real-secret"}
    document = client.get("/api/openapi.json", headers=key)
    assert document.status_code == 200
    assert "RateLimit-Remaining" in document.headers
    problem(client.post(ITEMS, json={"name": "x"}, headers=key), 503)


# --- Sign-up judges the whole request, and takes one mailbox ----------------------


def test_a_bad_sign_up_says_nothing_about_the_address(
    app: Flask, anonymous: FlaskClient
) -> None:
    add_account(app)
    answers = [
        problem(
            anonymous.post(
                f"{AUTH}/register", json={"email": email, "password": "password1234"}
            ),
            422,
        )
        for email in (EMAIL, "free@example.com")
    ]
    # The taken address and the free one get the same refusal (the password).
    assert answers[0] == answers[1]
    assert answers[0]["errors"][0]["field"] == "password"


def test_a_sign_up_racing_another_for_the_address_is_a_conflict(
    app: Flask, anonymous: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_account(app)
    # The other request's account appears between the lookup and the insert.
    monkeypatch.setattr(users, "find_user", lambda _email: None)
    response = anonymous.post(
        f"{AUTH}/register", json={"email": EMAIL, "password": PASSWORD}
    )
    assert "exists already" in problem(response, 409)["detail"]
    assert len(db.session.scalars(select(User)).all()) == 1


@pytest.mark.parametrize(
    "email",
    [
        "m1@evil.example,root,postmaster",
        "a<victim@example.com>",
        "b <victim@example.com>",
        "grp:victim@example.com;",
        "victim@example.com\x85",
        "victim\u2028@example.com",
        "victim@example.com\r\nBcc: other@example.com",
        '"victim"@example.com',
        "victim@[192.0.2.1]",
        "victim@example.com (comment)",
        "victim@-example.com",
        "victim..x@example.com",
        "victim@localhost",
        # An RFC 2047 encoded word: a mail header decodes it into any text.
        "=?utf-8?q?attacker=40evil.test=2C?=x1@example.com",
        "=?utf-8?q?admin?=@example.com",
    ],
)
def test_sign_up_takes_exactly_one_mailbox(anonymous: FlaskClient, email: str) -> None:
    response = anonymous.post(
        f"{AUTH}/register", json={"email": email, "password": PASSWORD}
    )
    assert problem(response, 422)["errors"][0]["field"] == "email"
    assert db.session.scalars(select(User)).all() == []


def test_one_mailbox_is_one_account_whatever_its_domain_spelling(
    make_app: AppFactory,
) -> None:
    outside_a_window_edge(margin=5)  # the counts must not reset mid-test
    app = make_app(
        RATE_LIMITS_ENABLED=True,
        RESILIENCE_POLICIES=app_policies(register_mailbox="1 per minute"),
        tables=True,
    )
    client = app.test_client()
    first = client.post(
        f"{AUTH}/register",
        json={"email": "Jo@xn--mller-kva.example.com", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "192.0.2.1"},
    )
    assert first.status_code == 201
    assert body(first)["email"] == "jo@müller.example.com"
    # The same mailbox spelt in Unicode: the same account, and the same quota.
    second = client.post(
        f"{AUTH}/register",
        json={"email": "jo@MÜLLER.example.com", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "192.0.2.2"},
    )
    problem(second, 429)
    assert sign_in(client, "JO@xn--mller-kva.example.com").status_code == 200


def test_others_cannot_use_up_the_sign_ups_of_a_mailbox(make_app: AppFactory) -> None:
    app = make_app(RATE_LIMITS_ENABLED=True, tables=True)  # the shipped limits
    client = app.test_client()
    mailbox = {"email": "owner@example.com"}
    # Twenty clients try the owner's mailbox, each once (a refused password):
    # more than one client's sign-ups in a minute, and in an hour.
    for number in range(20):
        attempt = client.post(
            f"{AUTH}/register",
            json={**mailbox, "password": "password1234"},
            environ_base={"REMOTE_ADDR": f"192.0.2.{number + 1}"},
        )
        problem(attempt, 422)
    # The owner, from their own address, still signs up (this was a 429).
    owner = client.post(
        f"{AUTH}/register",
        json={**mailbox, "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "198.51.100.7"},
    )
    assert owner.status_code == 201, owner.get_data(as_text=True)


@pytest.mark.usefixtures("app")
def test_every_way_in_parses_the_address(runner: FlaskCliRunner) -> None:
    result = runner.invoke(
        args=["create-user", "--email", "ops@example.com,root"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 1
    assert "The e-mail address is not valid" in result.output
    with pytest.raises(users.AccountError):
        users.create_user("a<ops@example.com>", PASSWORD)
    assert db.session.scalars(select(User)).all() == []


# --- Items belong to their owner ---------------------------------------------------


def test_only_the_owner_or_an_admin_changes_an_item(
    app: Flask, anonymous: FlaskClient
) -> None:
    owner = add_account(app)
    other = add_account(app, "other@example.com")
    admin = add_account(app, "admin@example.com", roles=("admin", "user"))
    created = anonymous.post(ITEMS, json={"name": "mine"}, headers=owner.headers)
    item = body(created)
    assert item["owner_id"] == owner.id
    path = f"{ITEMS}/{item['id']}"
    for method in ("patch", "delete"):
        denied = getattr(anonymous, method)(
            path, json={"name": "theirs"}, headers=other.headers
        )
        assert "only its owner or an admin" in problem(denied, 403)["detail"]
    assert body(anonymous.get(path))["name"] == "mine"
    changed = anonymous.patch(path, json={"quantity": 2}, headers=owner.headers)
    assert body(changed)["quantity"] == 2
    renamed = anonymous.patch(path, json={"name": "moderated"}, headers=admin.headers)
    assert body(renamed)["owner_id"] == owner.id
    assert anonymous.delete(path, headers=admin.headers).status_code == 204
    # Missing stays 404 for everyone.
    problem(anonymous.delete(path, headers=other.headers), 404)


def test_an_item_without_an_owner_is_left_to_admins(
    app: Flask, anonymous: FlaskClient
) -> None:
    user = add_account(app)
    admin = add_account(app, "admin@example.com", roles=("admin", "user"))
    item = Item(name="seeded")
    db.session.add(item)
    db.session.commit()
    path = f"{ITEMS}/{item.id}"
    problem(anonymous.patch(path, json={"quantity": 1}, headers=user.headers), 403)
    assert (
        anonymous.patch(path, json={"quantity": 1}, headers=admin.headers).status_code
        == 200
    )


def test_sign_up_grants_a_user_and_no_more(anonymous: FlaskClient) -> None:
    account = {"email": "new@example.com", "password": PASSWORD}
    with_roles = anonymous.post(
        f"{AUTH}/register", json={**account, "roles": ["admin"]}
    )
    assert problem(with_roles, 422)["errors"][0]["field"] == "roles"
    created = anonymous.post(f"{AUTH}/register", json=account)
    assert body(created)["roles"] == ["user"]
    token = bearer(tokens_of(anonymous, "new@example.com")["access_token"])
    problem(anonymous.get(f"{AUTH}/users", headers=token), 403)
    item = body(anonymous.post(ITEMS, json={"name": "own"}, headers=token))
    assert item["owner_id"] == body(created)["id"]


# --- API keys: expiry, recent sign-in, revocation, a cap ---------------------------


def create_key(
    client: FlaskClient,
    access_token: str,
    environ_base: dict[str, str] | None = None,
    **fields: Any,
) -> Any:
    return client.post(
        f"{AUTH}/api-keys",
        json={"name": "script", "scopes": ["read", "write"], **fields},
        headers=bearer(access_token),
        environ_base=environ_base or {},
    )


def test_a_password_change_revokes_every_api_key(
    app: Flask, anonymous: FlaskClient
) -> None:
    account = add_account(app)
    # An attacker with a (stolen) fresh token minted a key of their own.
    stolen = tokens_of(anonymous)
    minted = body(create_key(anonymous, stolen["access_token"]))["key"]
    minted_headers = {"X-API-Key": minted}
    assert anonymous.get(f"{AUTH}/me", headers=minted_headers).status_code == 200
    owner = tokens_of(anonymous)
    changed = anonymous.post(
        f"{AUTH}/password",
        json={"current_password": PASSWORD, "new_password": "a-new-pass-phrase-99"},
        headers=bearer(owner["access_token"]),
    )
    assert changed.status_code == 204
    for headers in (minted_headers, account.headers):
        refused(anonymous.get(f"{AUTH}/me", headers=headers))
        refused(anonymous.post(ITEMS, json={"name": "x"}, headers=headers))
    assert all(key.revoked_at is not None for key in db.session.scalars(select(ApiKey)))


def test_deactivating_an_account_ends_its_keys_for_good(
    app: Flask, anonymous: FlaskClient
) -> None:
    account = add_account(app)
    admin = add_account(app, "admin@example.com", roles=("admin", "user"))
    pair = tokens_of(anonymous)
    path = f"{AUTH}/users/{account.id}"
    denied = anonymous.patch(path, json={"active": False}, headers=account.headers)
    problem(denied, 403)
    # An admin's API key (even one that may write) manages no accounts, and an
    # admin cannot disable their own: a signed-in admin's token only.
    with_key = anonymous.patch(path, json={"active": False}, headers=admin.headers)
    assert "API key" in problem(with_key, 403)["detail"]
    admin_token = bearer(tokens_of(anonymous, admin.email)["access_token"])
    itself = anonymous.patch(
        f"{AUTH}/users/{admin.id}", json={"active": False}, headers=admin_token
    )
    problem(itself, 403)
    off = anonymous.patch(path, json={"active": False}, headers=admin_token)
    assert body(off)["active"] is False
    refused(anonymous.get(f"{AUTH}/me", headers=account.headers))
    refused(anonymous.get(f"{AUTH}/me", headers=bearer(pair["access_token"])))
    on = anonymous.patch(path, json={"active": True}, headers=admin_token)
    assert body(on)["active"] is True
    # Enabled again: a new sign-in works; the old key and tokens stay dead.
    assert sign_in(anonymous).status_code == 200
    refused(anonymous.get(f"{AUTH}/me", headers=account.headers))
    refused(
        anonymous.post(f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]})
    )
    problem(
        anonymous.patch(
            f"{AUTH}/users/9999", json={"active": False}, headers=admin_token
        ),
        404,
    )


NEW_PASSWORD = "a-new-pass-phrase-99"


def changed_elsewhere(user_id: int, *, active: bool = True) -> None:
    """What another worker's password change (or, with `active` False, an
    admin's deactivation) commits, written past this session's objects, which
    keep what the request in progress loaded (as in another process)."""
    values: dict[str, Any] = {"fs_uniquifier": new_uniquifier(), "active": active}
    if active:
        values["password_hash"] = passwords.hash_password(NEW_PASSWORD)
    db.session.execute(
        update(User)
        .where(User.id == user_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    for table in (ApiKey, TokenFamily):
        db.session.execute(
            update(table)
            .where(table.user_id == user_id, table.revoked_at.is_(None))
            .values(revoked_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    db.session.commit()


def race_key_creation(
    monkeypatch: pytest.MonkeyPatch, user_id: int, moment: str, *, active: bool
) -> None:
    """Make the next key creation meet a change committed at `moment`: after it
    authenticated ("checked": before the account is locked and checked), or
    after that check, just before its row is written ("insert", as SQLite
    allows: it locks no row)."""
    module = users if moment == "insert" else auth_api
    name = "secret_hash" if moment == "insert" else "confirm_sign_in"
    original = getattr(module, name)
    fired: list[bool] = []

    def then_change(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if not fired:
            fired.append(True)
            changed_elsewhere(user_id, active=active)
        return result

    monkeypatch.setattr(module, name, then_change)


@pytest.mark.parametrize("moment", ["checked", "insert"])
def test_a_key_made_while_the_password_changes_never_works(
    app: Flask, anonymous: FlaskClient, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    account = add_account(app)
    pair = tokens_of(anonymous)
    race_key_creation(monkeypatch, account.id, moment, active=True)
    created = create_key(anonymous, pair["access_token"], name="raced")
    monkeypatch.undo()
    if moment == "checked":
        # The change is seen: nothing is made.
        refused(created)
        assert db.session.scalar(select(ApiKey).where(ApiKey.name == "raced")) is None
    else:
        # Written after the change committed: the key belongs to the old
        # password's sign-in, and never works.
        refused(
            anonymous.get(f"{AUTH}/me", headers={"X-API-Key": body(created)["key"]})
        )
    assert sign_in(anonymous, password=NEW_PASSWORD).status_code == 200


@pytest.mark.parametrize("moment", ["checked", "insert"])
def test_a_key_made_while_the_account_is_disabled_stays_dead_when_enabled(
    app: Flask, anonymous: FlaskClient, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    account = add_account(app)
    admin = add_account(app, "admin@example.com", roles=("admin", "user"))
    pair = tokens_of(anonymous)
    admin_token = bearer(tokens_of(anonymous, admin.email)["access_token"])
    race_key_creation(monkeypatch, account.id, moment, active=False)
    created = create_key(anonymous, pair["access_token"], name="raced")
    monkeypatch.undo()
    on = anonymous.patch(
        f"{AUTH}/users/{account.id}", json={"active": True}, headers=admin_token
    )
    assert body(on)["active"] is True
    if moment == "checked":
        refused(created)
    else:
        key = body(created)["key"]
        refused(anonymous.get(f"{AUTH}/me", headers={"X-API-Key": key}))


def test_a_sign_in_with_the_old_password_racing_a_change_gets_dead_tokens(
    app: Flask, anonymous: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = add_account(app)
    original = users.check_password

    def then_change(email: str, password: str) -> User | None:
        # The old password was right when checked; the change commits before
        # the sign-in's family is written.
        user = original(email, password)
        changed_elsewhere(account.id)
        return user

    monkeypatch.setattr(users, "check_password", then_change)
    raced = tokens_of(anonymous)
    monkeypatch.undo()
    refused(anonymous.get(f"{AUTH}/me", headers=bearer(raced["access_token"])))
    refused(
        anonymous.post(
            f"{AUTH}/refresh", json={"refresh_token": raced["refresh_token"]}
        )
    )
    assert sign_in(anonymous, password=NEW_PASSWORD).status_code == 200


def test_a_family_of_a_replaced_uniquifier_is_refused(
    app: Flask, anonymous: FlaskClient
) -> None:
    account = add_account(app)
    pair = tokens_of(anonymous)
    # A row written under an fs_uniquifier the account no longer has.
    db.session.execute(
        update(TokenFamily)
        .where(TokenFamily.user_id == account.id)
        .values(user_uniquifier="replaced")
    )
    db.session.commit()
    refused(anonymous.get(f"{AUTH}/me", headers=bearer(pair["access_token"])))
    refused(
        anonymous.post(f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]})
    )


def test_a_rehash_never_brings_back_a_password_changed_meanwhile(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'shared.db'}"}
    account = add_account(make_app(tables=True, **shared))
    stronger = make_app(PASSWORD_HASH_TIME_COST=2, **shared)
    original = passwords.needs_rehash

    def changed_first(stored: str) -> bool:
        # The old password was right when checked; the change commits before
        # the sign-in stores the rehashed old password.
        changed_elsewhere(account.id)
        return original(stored)

    monkeypatch.setattr(passwords, "needs_rehash", changed_first)
    client = stronger.test_client()
    sign_in(client)
    monkeypatch.undo()
    assert sign_in(client, password=NEW_PASSWORD).status_code == 200
    refused(sign_in(client), error=None)


def test_keys_expire(app: Flask, anonymous: FlaskClient) -> None:
    config = app.config
    account = add_account(app)
    pair = tokens_of(anonymous)
    default = body(create_key(anonymous, pair["access_token"]))
    lifetime = datetime.fromisoformat(default["expires_at"]) - utcnow()
    assert abs(lifetime - timedelta(days=config["API_KEY_TTL_DAYS"])) < timedelta(
        minutes=1
    )
    week = body(create_key(anonymous, pair["access_token"], expires_in_days=7))
    lifetime = datetime.fromisoformat(week["expires_at"]) - utcnow()
    assert abs(lifetime - timedelta(days=7)) < timedelta(minutes=1)
    too_long = create_key(
        anonymous,
        pair["access_token"],
        expires_in_days=config["API_KEY_MAX_TTL_DAYS"] + 1,
    )
    assert problem(too_long, 422)["errors"][0]["field"] == "expires_in_days"
    # A JSON integer, as JSON Schema counts them (7.0 is one), and nothing else.
    for refused_days in (0, -1, 2.5, "7", True):
        wrong = create_key(
            anonymous, pair["access_token"], expires_in_days=refused_days
        )
        assert problem(wrong, 422)["errors"][0]["field"] == "expires_in_days"
    whole = create_key(anonymous, pair["access_token"], expires_in_days=7.0)
    assert whole.status_code == 201
    # A key past its expiry is refused like a revoked one.
    assert anonymous.get(f"{AUTH}/me", headers=account.headers).status_code == 200
    key = db.session.scalars(select(ApiKey).order_by(ApiKey.id)).first()
    assert key is not None
    key.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    response = anonymous.get(f"{AUTH}/me", headers=account.headers)
    assert refused(response)["detail"] == "The API key is not valid."


def age_sign_ins(seconds: int) -> None:
    """Make every sign-in so far `seconds` older."""
    for family in db.session.scalars(select(TokenFamily)):
        family.created_at -= timedelta(seconds=seconds)
    db.session.commit()


def test_creating_a_key_needs_a_recent_sign_in(
    app: Flask, anonymous: FlaskClient
) -> None:
    add_account(app)
    max_age = app.config["API_KEY_SIGN_IN_MAX_AGE"]
    pair = tokens_of(anonymous)
    # Within the window, a refreshed token still carries its sign-in's time.
    refreshed = body(
        anonymous.post(f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]})
    )
    assert create_key(anonymous, refreshed["access_token"]).status_code == 201
    # Later, a token refreshed from an old sign-in (one that was stolen, say)
    # cannot mint a key that would outlive it.
    age_sign_ins(max_age + 1)
    late = body(
        anonymous.post(
            f"{AUTH}/refresh", json={"refresh_token": refreshed["refresh_token"]}
        )
    )
    stale = create_key(anonymous, late["access_token"])
    assert (
        "sign-in at most"
        in refused(stale, "insufficient_user_authentication")["detail"]
    )
    assert f"max_age={max_age}" in stale.headers["WWW-Authenticate"]
    wrong = create_key(anonymous, late["access_token"], password="not the password")
    assert problem(wrong, 422)["errors"][0]["field"] == "password"
    confirmed = create_key(anonymous, late["access_token"], password=PASSWORD)
    assert confirmed.status_code == 201
    # A token from before tokens said when their sign-in was: as good as old.
    fresh = tokens_of(anonymous)
    claims = claims_of(fresh["access_token"])
    del claims["auth_time"]
    unknown = create_key(anonymous, resigned(claims))
    refused(unknown, "insufficient_user_authentication")


def test_a_password_given_for_a_key_counts_as_a_sign_in_attempt(
    make_app: AppFactory,
) -> None:
    outside_a_window_edge(margin=5)  # the counts must not reset mid-test
    app = make_app(RATE_LIMITS_ENABLED=True, tables=True)  # the shipped limits
    add_account(app)
    client = app.test_client()
    pair = tokens_of(client)  # the address's first of five attempts a minute
    for _ in range(3):
        guess = create_key(client, pair["access_token"], password="a guess of mine")
        assert problem(guess, 422)["errors"][0]["field"] == "password"
    assert sign_in(client, password="a wrong guess").status_code == 401
    # Sign-ins and passwords given for a key share one count, and one limit:
    # a stolen token brings no guesses of its own.
    problem(create_key(client, pair["access_token"], password=PASSWORD), 429)
    problem(sign_in(client), 429)


def test_passwords_for_keys_count_against_the_account_as_sign_ins_do(
    make_app: AppFactory,
) -> None:
    policies = app_policies(login_account="3 per hour")
    outside_a_window_edge(3600, margin=5)  # the counts must not reset mid-test
    app = make_app(RATE_LIMITS_ENABLED=True, RESILIENCE_POLICIES=policies, tables=True)
    add_account(app)
    token = tokens_of(app.test_client())["access_token"]  # the account's first
    # A stolen token, used from other addresses (and by no known device).
    thief = app.test_client()
    guess = {"password": "a guess of mine"}
    first = create_key(thief, token, **guess, environ_base={"REMOTE_ADDR": "192.0.2.1"})
    problem(first, 422)
    assert sign_in_from(thief, "192.0.2.2", "a guess of mine").status_code == 401
    # The account's shared limit (3) is spent, by both kinds of guess together.
    limited = create_key(
        thief, token, **guess, environ_base={"REMOTE_ADDR": "192.0.2.3"}
    )
    problem(limited, 429)
    assert limited.headers["RateLimit-Limit"] == "3"
    problem(sign_in_from(thief, "192.0.2.4", PASSWORD), 429)


@pytest.mark.parametrize(
    "name",
    [
        "invoice\u202egpj.exe",  # right-to-left override
        "a\u202ab",  # left-to-right embedding
        "a\u2066b\u2069",  # isolates
        "a\u200eb",  # left-to-right mark
        "a\u200fb",  # right-to-left mark
        "a\u200bb",  # zero-width space (format)
        "a\u00adb",  # soft hyphen (format)
        "tag\U000e0041",  # a tag character (format)
        "bell\x07",  # C0
        "a\x9bb",  # C1
        "line\x85break",  # next line (C1)
        "line\u2028break",  # line separator
        "para\u2029break",  # paragraph separator
    ],
)
def test_api_key_names_hold_no_hidden_characters(
    app: Flask, anonymous: FlaskClient, name: str
) -> None:
    add_account(app)
    pair = tokens_of(anonymous)
    response = create_key(anonymous, pair["access_token"], name=name)
    assert [error["field"] for error in problem(response, 422)["errors"]] == ["name"]
    assert db.session.scalar(select(ApiKey).where(ApiKey.name == name)) is None


def test_api_key_names_may_be_any_visible_text(
    app: Flask, anonymous: FlaskClient
) -> None:
    add_account(app)
    pair = tokens_of(anonymous)
    name = "Déploiement: CI 🚀 (نشر)"
    created = create_key(anonymous, pair["access_token"], name=name)
    assert body(created)["name"] == name


def test_live_keys_per_user_are_capped(make_app: AppFactory) -> None:
    app = make_app(API_KEYS_PER_USER=2, tables=True)
    add_account(app)  # one key
    client = app.test_client()
    pair = tokens_of(client)
    second = body(create_key(client, pair["access_token"]))
    third = create_key(client, pair["access_token"])
    assert "2 live API keys" in problem(third, 409)["detail"]
    document = body(client.get("/api/openapi.json"))
    assert "409" in document["paths"][f"{AUTH}/api-keys"]["post"]["responses"]
    # Revoked and expired keys leave their place.
    client.delete(
        f"{AUTH}/api-keys/{second['id']}", headers=bearer(pair["access_token"])
    )
    replacement = create_key(client, pair["access_token"])
    assert replacement.status_code == 201
    with app.app_context():
        key = db.session.get_one(ApiKey, body(replacement)["id"])
        key.expires_at = utcnow()
        db.session.commit()
    assert create_key(client, pair["access_token"]).status_code == 201
    runner = app.test_cli_runner()
    result = runner.invoke(args=["create-api-key", "--email", EMAIL, "--name", "x"])
    assert result.exit_code == 1
    assert "2 live API keys" in result.output


def test_the_cap_holds_for_requests_at_once(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL (TEST_DATABASE_URL) the requests run in parallel, each on
    # a connection of its own; the lock on the user's row serialises them.
    app = make_app(
        API_KEYS_PER_USER=3,
        MAX_IN_FLIGHT=64,  # no load shedding: every request must reach the view
        tables=True,
    )
    add_account(app)
    pair = tokens_of(app.test_client())
    real_hash = users.secret_hash

    def slow_hash(key: str) -> str:
        # Between counting the live keys and adding one: where a race would be.
        time.sleep(0.2)
        return real_hash(key)

    monkeypatch.setattr(users, "secret_hash", slow_hash)
    start = threading.Barrier(8, timeout=10)

    def create(_: int) -> int:
        client = app.test_client()
        start.wait()
        return int(create_key(client, pair["access_token"]).status_code)

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(create, range(8), timeout=60))
    assert statuses == [201, 201] + [409] * 6
    with app.app_context():
        live = db.session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None)))
        assert len(live.all()) == 3


def test_cli_keys_expire_and_accounts_can_be_disabled(
    app: Flask, runner: FlaskCliRunner
) -> None:
    account = add_account(app)
    made = runner.invoke(
        args=[
            "create-api-key",
            "--email",
            EMAIL,
            "--name",
            "cron",
            "--expires-in-days",
            "3",
        ]
    )
    assert made.exit_code == 0, made.output
    key = users.check_api_key(made.stdout.strip())
    assert key is not None
    assert abs(key.expires_at - utcnow() - timedelta(days=3)) < timedelta(minutes=1)
    too_long = runner.invoke(
        args=[
            "create-api-key",
            "--email",
            EMAIL,
            "--name",
            "x",
            "--expires-in-days",
            "9999",
        ]
    )
    assert too_long.exit_code == 1
    assert "at most 365 days" in too_long.output
    off = runner.invoke(args=["deactivate-user", "--email", EMAIL])
    assert off.exit_code == 0, off.output
    assert users.check_api_key(made.stdout.strip()) is None
    assert "disabled" in runner.invoke(args=["list-users"]).output
    on = runner.invoke(args=["activate-user", "--email", EMAIL])
    assert on.exit_code == 0, on.output
    assert db.session.get_one(User, account.id).active is True
    assert users.check_api_key(made.stdout.strip()) is None
    missing = runner.invoke(args=["deactivate-user", "--email", "no@example.com"])
    assert missing.exit_code == 1
