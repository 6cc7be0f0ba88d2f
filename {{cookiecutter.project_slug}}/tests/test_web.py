"""The web UI (web/): sessions, forms, CSRF, redirects and error pages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from {{ cookiecutter.package_name }}.auth import users
from {{ cookiecutter.package_name }}.config import ProductionConfig
from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.models import ApiKey, User
from {{ cookiecutter.package_name }}.models.base import utcnow

from conftest import PASSWORD, AppFactory, add_account

EMAIL = "writer@example.com"


@pytest.fixture
def site(make_app: AppFactory) -> Flask:
    """An app with empty tables, and no app context held open: each request
    gets its own ``g``, as in a server (Flask-Login and Flask-WTF keep the
    signed-in user and the CSRF token there)."""
    return make_app(tables=True)


@pytest.fixture
def visitor(site: Flask) -> FlaskClient:
    """A browser without a session yet."""
    return site.test_client()


NEW_PASSWORD = "a-brand-new-passphrase-42"


def csrf_token(page: Any) -> str:
    """The CSRF token of the (first) form on `page`."""
    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def log_in(
    client: FlaskClient,
    email: str = EMAIL,
    password: str = PASSWORD,
    path: str = "/login",
) -> Any:
    token = csrf_token(client.get(path))
    return client.post(
        path, data={"email": email, "password": password, "csrf_token": token}
    )


def change_password(
    client: FlaskClient,
    token: str,
    current: str = PASSWORD,
    new: str = NEW_PASSWORD,
    headers: dict[str, str] | None = None,
) -> Any:
    return client.post(
        "/profile/password",
        data={
            "current_password": current,
            "new_password": new,
            "confirm": new,
            "csrf_token": token,
        },
        headers=headers,
    )


def test_pages_render_for_visitors(visitor: FlaskClient) -> None:
    for path in ("/", "/login", "/register"):
        page = visitor.get(path)
        assert page.status_code == 200, path
        assert page.mimetype == "text/html"
        assert '<link rel="stylesheet" href="/static/web/app.css">' in page.text
        assert "<script" not in page.text
    stylesheet = visitor.get("/static/web/app.css")
    assert stylesheet.status_code == 200
    assert stylesheet.mimetype == "text/css"
    stylesheet.close()


def test_every_field_has_a_label_and_the_form_a_token(visitor: FlaskClient) -> None:
    page = visitor.get("/register").text
    for name in ("email", "password", "confirm"):
        assert f'<label for="{name}">' in page
        assert f'id="{name}"' in page
    assert 'autocomplete="new-password"' in page
    assert 'aria-describedby="password-hint"' in page


def test_registering_signs_the_visitor_in(visitor: FlaskClient) -> None:
    token = csrf_token(visitor.get("/register"))
    response = visitor.post(
        "/register",
        data={
            "email": "New@Example.com",
            "password": PASSWORD,
            "confirm": PASSWORD,
            "csrf_token": token,
        },
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/profile"
    profile = visitor.get("/profile")
    assert profile.status_code == 200
    assert "new@example.com" in profile.text


def test_registration_errors_are_tied_to_their_fields(visitor: FlaskClient) -> None:
    token = csrf_token(visitor.get("/register"))
    response = visitor.post(
        "/register",
        data={
            "email": "new@example.com",
            "password": "password1234",
            "confirm": "password1234",
            "csrf_token": token,
        },
    )
    assert response.status_code == 422
    assert 'aria-invalid="true"' in response.text
    assert 'aria-describedby="password-hint password-error"' in response.text
    assert 'id="password-error"' in response.text
    assert 'role="alert"' in response.text
    assert "too common" in response.text
    differ = visitor.post(
        "/register",
        data={
            "email": "new@example.com",
            "password": PASSWORD,
            "confirm": PASSWORD + "x",
            "csrf_token": token,
        },
    )
    assert differ.status_code == 422
    assert "The passwords differ." in differ.text


def test_a_taken_address_is_said_on_the_form(site: Flask, visitor: FlaskClient) -> None:
    add_account(site)
    token = csrf_token(visitor.get("/register"))
    response = visitor.post(
        "/register",
        data={
            "email": EMAIL,
            "password": PASSWORD,
            "confirm": PASSWORD,
            "csrf_token": token,
        },
    )
    assert response.status_code == 422
    assert "exists already" in response.text


def test_a_wrong_password_shows_one_message_for_both_failures(
    site: Flask, visitor: FlaskClient
) -> None:
    add_account(site)
    wrong = log_in(visitor, password="not the password at all")
    unknown = log_in(visitor, email="nobody@example.com")
    for response in (wrong, unknown):
        assert response.status_code == 422
        assert "The e-mail address or the password is not correct." in response.text
    assert visitor.get("/profile").status_code == 302


def test_log_in_and_out(site: Flask, visitor: FlaskClient) -> None:
    add_account(site)
    response = log_in(visitor)
    assert (response.status_code, response.headers["Location"]) == (302, "/profile")
    profile = visitor.get("/profile")
    assert EMAIL in profile.text
    token = csrf_token(profile)
    logout = visitor.post("/logout", data={"csrf_token": token})
    assert (logout.status_code, logout.headers["Location"]) == (302, "/login")
    assert visitor.get("/profile").status_code == 302


def test_the_profile_needs_a_session(visitor: FlaskClient) -> None:
    response = visitor.get("/profile")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/profile"


@pytest.mark.parametrize(
    ("next_page", "lands_on"),
    [
        ("/profile", "/profile"),
        ("/?tab=1", "/?tab=1"),
        ("https://evil.example/", "/profile"),
        ("//evil.example/", "/profile"),
        ("/\\evil.example", "/profile"),
        ("/\t/evil.example", "/profile"),
        ("javascript:alert(1)", "/profile"),
        ("profile", "/profile"),
    ],
)
def test_next_only_leads_to_this_site(
    site: Flask, visitor: FlaskClient, next_page: str, lands_on: str
) -> None:
    add_account(site)
    path = "/login?" + f"next={next_page}"
    response = log_in(visitor, path=path)
    assert response.status_code == 302
    assert response.headers["Location"] == lands_on


def test_forms_without_the_csrf_token_are_refused(
    site: Flask, visitor: FlaskClient
) -> None:
    add_account(site)
    for data in ({}, {"csrf_token": "forged"}):
        response = visitor.post(
            "/login", data={"email": EMAIL, "password": PASSWORD} | data
        )
        assert response.status_code == 400
        assert response.mimetype == "text/html"
        assert "CSRF" in response.text
    assert visitor.get("/profile").status_code == 302
    # A token from another session does not pass either.
    other = site.test_client()
    stolen = csrf_token(other.get("/login"))
    response = visitor.post(
        "/login", data={"email": EMAIL, "password": PASSWORD, "csrf_token": stolen}
    )
    assert response.status_code == 400


def test_the_api_takes_no_session_and_no_csrf_token(
    site: Flask, visitor: FlaskClient
) -> None:
    account = add_account(site)
    log_in(visitor)
    # Signed in on the pages, yet the API sees no credential: a session cookie
    # a browser sends on its own must not write through the API.
    response = visitor.post("/api/v1/items", json={"name": "x"})
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    written = visitor.post("/api/v1/items", json={"name": "x"}, headers=account.headers)
    assert written.status_code == 201


def test_a_password_change_ends_the_other_sessions(
    site: Flask, visitor: FlaskClient
) -> None:
    add_account(site)
    elsewhere = site.test_client()
    log_in(elsewhere)
    log_in(visitor)
    profile = visitor.get("/profile")
    response = change_password(visitor, csrf_token(profile))
    assert (response.status_code, response.headers["Location"]) == (302, "/profile")
    assert "other sessions are signed out" in visitor.get("/profile").text
    assert elsewhere.get("/profile").status_code == 302
    assert log_in(elsewhere).status_code == 422
    assert log_in(elsewhere, password=NEW_PASSWORD).status_code == 302


def test_a_password_change_needs_the_current_password(
    site: Flask, visitor: FlaskClient
) -> None:
    add_account(site)
    log_in(visitor)
    token = csrf_token(visitor.get("/profile"))
    for current, new, message in (
        ("wrong-wrong-wrong", NEW_PASSWORD, "current password is not correct"),
        (PASSWORD, "password1234", "too common"),
    ):
        response = change_password(visitor, token, current, new)
        assert response.status_code == 422
        assert message in response.text


def test_a_disabled_account_loses_its_session(
    site: Flask, visitor: FlaskClient
) -> None:
    account = add_account(site)
    log_in(visitor)
    with site.app_context():
        db.session.get_one(User, account.id).active = False
        db.session.commit()
    assert visitor.get("/profile").status_code == 302


def test_sign_in_on_the_page_is_limited(make_app: AppFactory) -> None:
    app = make_app(RATE_LIMITS_ENABLED=True, tables=True)
    add_account(app)
    client = app.test_client()
    for _ in range(5):
        assert log_in(client, password="wrong guess of mine").status_code == 422
    limited = log_in(client)
    assert limited.status_code == 429
    assert limited.mimetype == "text/html"
    assert int(limited.headers["Retry-After"]) > 0


def test_wrong_passwords_elsewhere_do_not_lock_the_owner_out(
    make_app: AppFactory,
) -> None:
    app = make_app(RATE_LIMITS_ENABLED=True, tables=True)
    add_account(app)
    attacker = app.test_client()
    attacker.environ_base["REMOTE_ADDR"] = "203.0.113.66"
    for _ in range(5):
        assert log_in(attacker, password="wrong guess of mine").status_code == 422
    assert log_in(attacker).status_code == 429
    owner = app.test_client()
    owner.environ_base["REMOTE_ADDR"] = "198.51.100.7"
    assert log_in(owner).status_code == 302


def test_the_profile_lists_the_live_keys_and_revokes_them(
    site: Flask, visitor: FlaskClient
) -> None:
    account = add_account(site)
    other = add_account(site, "other@example.com")
    with site.app_context():
        user = db.session.get_one(User, account.id)
        _, expired = users.create_api_key(user, "old one", ["read"])
        key = db.session.scalars(select(ApiKey).where(ApiKey.name == "old one")).one()
        key.expires_at = utcnow()
        db.session.commit()
        assert users.check_api_key(expired) is None
        mine = db.session.scalars(
            select(ApiKey).where(ApiKey.user_id == account.id, ApiKey.name == "tests")
        ).one()
        theirs = db.session.scalars(
            select(ApiKey).where(ApiKey.user_id == other.id)
        ).one()
        mine_id, prefix, theirs_id = mine.id, mine.prefix, theirs.id
    visitor.get("/api/v1/auth/me", headers=account.headers)  # a last use
    log_in(visitor)
    page = visitor.get("/profile").text
    assert f"ak_{prefix}_" in page
    assert "old one" not in page
    row = page.split(f"ak_{prefix}_")[1].split("</tr>")[0]
    assert "never" not in row  # it was used: when is shown
    assert "UTC" in row
    assert account.api_key not in page
    token = csrf_token(visitor.get("/profile"))
    # Without the form's token, nothing happens.
    assert visitor.post(f"/profile/api-keys/{mine_id}/revoke").status_code == 400
    assert visitor.get("/api/v1/auth/me", headers=account.headers).status_code == 200
    # Someone else's key is not there to revoke.
    foreign = visitor.post(
        f"/profile/api-keys/{theirs_id}/revoke", data={"csrf_token": token}
    )
    assert foreign.status_code == 404
    assert visitor.get("/api/v1/auth/me", headers=other.headers).status_code == 200
    revoked = visitor.post(
        f"/profile/api-keys/{mine_id}/revoke", data={"csrf_token": token}
    )
    assert (revoked.status_code, revoked.headers["Location"]) == (302, "/profile")
    page = visitor.get("/profile").text
    assert "is revoked" in page
    assert "You have no live API keys." in page
    assert visitor.get("/api/v1/auth/me", headers=account.headers).status_code == 401


def test_a_password_change_on_the_page_revokes_the_keys(
    site: Flask, visitor: FlaskClient
) -> None:
    account = add_account(site)
    log_in(visitor)
    response = change_password(visitor, csrf_token(visitor.get("/profile")))
    assert response.status_code == 302
    assert "API keys revoked" in visitor.get("/profile").text
    assert visitor.get("/api/v1/auth/me", headers=account.headers).status_code == 401


@pytest.mark.parametrize(
    "email", ["m1@example.com,root,postmaster", "a<victim@example.com>"]
)
def test_registration_takes_exactly_one_mailbox(
    visitor: FlaskClient, email: str
) -> None:
    token = csrf_token(visitor.get("/register"))
    response = visitor.post(
        "/register",
        data={
            "email": email,
            "password": PASSWORD,
            "confirm": PASSWORD,
            "csrf_token": token,
        },
    )
    assert response.status_code == 422
    assert "The e-mail address is not valid" in response.text


def test_errors_on_pages_are_pages(visitor: FlaskClient) -> None:
    response = visitor.post("/logout")
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    # Outside the pages, errors stay problem documents.
    assert visitor.get("/no-such-page").mimetype == "application/problem+json"


def test_pages_keep_the_security_headers(visitor: FlaskClient) -> None:
    page = visitor.get("/login")
    policy = page.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in policy
    assert "default-src 'self'" in policy
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "same-origin"


def test_session_cookies_are_locked_down_in_production(make_app: AppFactory) -> None:
    assert ProductionConfig.SESSION_COOKIE_SECURE is True
    app = make_app(tables=True, SESSION_COOKIE_SECURE=True)
    add_account(app)
    response = log_in(app.test_client())
    cookies = {
        cookie.partition("=")[0]: cookie
        for cookie in response.headers.getlist("Set-Cookie")
    }
    assert set(cookies) == {"session", "known_device"}
    for cookie in cookies.values():
        assert "Secure" in cookie
        assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookies["session"]
    # Sent only with this site's own requests: it picks a sign-in limit.
    assert "SameSite=Strict" in cookies["known_device"]


def test_pages_take_only_the_session(site: Flask, visitor: FlaskClient) -> None:
    # An API key (or token) is no credential on the pages: keys manage no accounts.
    account = add_account(site)
    assert visitor.get("/profile", headers=account.headers).status_code == 302
    token = csrf_token(visitor.get("/login"))
    response = change_password(visitor, token, headers=account.headers)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")
    assert log_in(visitor).headers["Location"] == "/profile"


def test_a_copy_of_the_cookie_is_worthless_after_logout(
    site: Flask, visitor: FlaskClient
) -> None:
    add_account(site)
    log_in(visitor)
    profile = visitor.get("/profile")
    copied = visitor.get_cookie("session")
    assert copied is not None
    visitor.post("/logout", data={"csrf_token": csrf_token(profile)})
    thief = site.test_client()
    thief.set_cookie("session", copied.value)
    assert thief.get("/profile").status_code == 302


def test_pages_are_not_cached(site: Flask, visitor: FlaskClient) -> None:
    add_account(site)
    log_in(visitor)
    assert visitor.get("/profile").headers["Cache-Control"] == "no-store"
    assert visitor.get("/login").headers["Cache-Control"] == "no-store"
    stylesheet = visitor.get("/static/web/app.css")
    assert stylesheet.headers.get("Cache-Control") != "no-store"
    stylesheet.close()


def test_a_database_outage_is_a_503_page(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/gone/app.db")
    client = app.test_client()
    token = csrf_token(client.get("/login"))
    response = client.post(
        "/login", data={"email": EMAIL, "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 503
    assert response.mimetype == "text/html"
    assert response.headers["Retry-After"] == "5"
    assert "briefly unavailable" in response.text
    # Error pages need no database, even for a visitor with a session cookie.
    assert client.get("/static/web/nope.css").status_code == 404
    assert client.post("/logout").status_code == 400
