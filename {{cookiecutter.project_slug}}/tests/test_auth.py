"""Accounts, passwords, tokens, API keys, roles and their limits (auth/)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import select

from {{ cookiecutter.package_name }}.auth import passwords, users
from {{ cookiecutter.package_name }}.auth.keys import (
    DEVELOPMENT_KEY_FILE,
    process_key,
)
from {{ cookiecutter.package_name }}.config import ConfigError
from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.models import ApiKey, TokenFamily, User

from conftest import PASSWORD, AppFactory, add_account, problem

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


# --- Limits -------------------------------------------------------------------


def test_sign_in_is_limited_per_client(make_app: AppFactory) -> None:
    app = make_app(RATE_LIMITS_ENABLED=True, tables=True)
    add_account(app)
    client = app.test_client()
    for number in range(5):
        response = sign_in(client, f"nobody{number}@example.com")
        assert response.status_code == 401
    limited = sign_in(client)
    problem(limited, 429)
    assert int(limited.headers["Retry-After"]) > 0


def test_sign_in_is_limited_per_account(make_app: AppFactory) -> None:
    app = make_app(RATE_LIMITS_ENABLED=True, tables=True)
    add_account(app)
    client = app.test_client()
    for number in range(5):
        address = {"REMOTE_ADDR": f"192.0.2.{number + 1}"}
        response = client.post(
            f"{AUTH}/token",
            json={"email": EMAIL, "password": "guess-number-{number}"},
            environ_base=address,
        )
        assert response.status_code == 401
    limited = client.post(
        f"{AUTH}/token",
        json={"email": EMAIL, "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "198.51.100.7"},
    )
    problem(limited, 429)


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


def test_a_token_caller_has_a_quota_of_their_own(make_app: AppFactory) -> None:
    policies = {
        "read": {"limit": "1 per minute"},
        "write": {"limit": "60 per minute", "idempotency": True},
        "login": {"limit": "60 per minute"},
        "auth": {"limit": "60 per minute"},
    }
    app = make_app(RATE_LIMITS_ENABLED=True, RESILIENCE_POLICIES=policies, tables=True)
    add_account(app)
    client = app.test_client()
    pair = tokens_of(client)
    assert client.get(ITEMS, headers=bearer(pair["access_token"])).status_code == 200
    # The address still has its own quota; the token's is spent.
    assert client.get(ITEMS).status_code == 200
    problem(client.get(ITEMS, headers=bearer(pair["access_token"])), 429)


def test_api_keys_bring_no_sign_in_quota_of_their_own(make_app: AppFactory) -> None:
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
    app = make_app(RATE_LIMITS_ENABLED=True, tables=True)
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
