"""Security headers on every response, HSTS in production, CORS where configured."""

from __future__ import annotations

import pytest
from flask import Flask, Response, session
from flask.testing import FlaskClient

from {{ cookiecutter.package_name }}.config import ConfigError, cors_origins

from conftest import PRODUCTION_EXTRAS, AppFactory, signing_key_pem

EXPECTED = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


@pytest.mark.parametrize(
    "path", ["/health/live", "/api/v1/items", "/no/such/page", "/api/docs"]
)
def test_every_response_carries_the_security_headers(
    client: FlaskClient, path: str
) -> None:
    response = client.get(path)
    for name, value in EXPECTED.items():
        assert response.headers[name] == value, name
    policy = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy
    assert "default-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert "Strict-Transport-Security" not in response.headers


def test_errors_carry_them_too(app: Flask, client: FlaskClient) -> None:
    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError

    assert client.get("/boom").headers["X-Frame-Options"] == "DENY"


def test_production_adds_hsts(
    monkeypatch: pytest.MonkeyPatch, make_app: AppFactory
) -> None:
    monkeypatch.setenv("SECRET_KEY", "k" * 8 + "3vQ9-xT_4mWz7Lr2Pb6Yc1Nd8Hs5Jf0Ga")
    monkeypatch.setenv("JWT_PRIVATE_KEY", signing_key_pem())
    monkeypatch.setenv("DATABASE_URL", "sqlite://")
    for name, value in PRODUCTION_EXTRAS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    response = make_app("production").test_client().get("/health/live")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


def test_a_view_can_set_its_own_value(app: Flask, client: FlaskClient) -> None:
    @app.get("/embeddable")
    def embeddable() -> Response:
        response = Response("ok")
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
        return response

    assert client.get("/embeddable").headers["X-Frame-Options"] == "SAMEORIGIN"


def test_the_headers_are_configured_in_one_place(make_app: AppFactory) -> None:
    app = make_app(SECURITY_HEADERS={"X-Custom": "yes"})
    response = app.test_client().get("/health/live")
    assert response.headers["X-Custom"] == "yes"
    assert "X-Frame-Options" not in response.headers


def test_sessions_round_trip_and_refuse_tampering(app: Flask) -> None:
    @app.get("/remember")
    def remember() -> str:
        session["seen"] = session.get("seen", 0) + 1
        return str(session["seen"])

    client = app.test_client()
    assert client.get("/remember").get_data(as_text=True) == "1"
    assert client.get("/remember").get_data(as_text=True) == "2"
    cookie = client.get_cookie("session")
    assert cookie is not None
    client.set_cookie("session", cookie.value[:-2] + "xx")
    assert client.get("/remember").get_data(as_text=True) == "1"


def test_no_signer_is_built_without_a_session_cookie(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_signer(*_args: object) -> None:
        raise AssertionError("a signer was built")

    monkeypatch.setattr(app.session_interface, "get_signing_serializer", no_signer)
    assert app.test_client().get("/health/live").status_code == 200


def test_double_slashes_are_not_redirected(client: FlaskClient) -> None:
    # Werkzeug would answer 308 with the client's Host header in Location.
    response = client.get("/api//v1/items", headers={"Host": "evil.example"})
    assert response.status_code == 404
    assert "Location" not in response.headers


def test_an_encoded_slash_is_not_a_slash(client: FlaskClient) -> None:
    # The server decodes %2F in PATH_INFO; the raw URI says what was sent.
    response = client.get(
        "/api/v1/items", environ_overrides={"RAW_URI": "/api/v1%2Fitems"}
    )
    assert response.status_code == 404
    response = client.get(
        "/api/v1/items", environ_overrides={"REQUEST_URI": "/api/v1/items?q=%2F"}
    )
    assert response.status_code == 200


def test_no_cross_origin_access_unless_configured(client: FlaskClient) -> None:
    response = client.get("/api/v1/items", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_configured_origins_may_call_the_api_without_cookies(
    make_app: AppFactory,
) -> None:
    app = make_app(CORS_ORIGINS=["https://app.example"], tables=True)
    client = app.test_client()
    allowed = client.get("/api/v1/items", headers={"Origin": "https://app.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Access-Control-Allow-Credentials" not in allowed.headers
    assert "RateLimit-Remaining" in allowed.headers["Access-Control-Expose-Headers"]
    preflight = client.options(
        "/api/v1/items",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    other = client.get("/api/v1/items", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    # Only the API: the probes and pages are for no other origin.
    probe = client.get("/health/live", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in probe.headers


@pytest.mark.parametrize(
    "value",
    ["https://app.example/path", "app.example", "*, https://app.example", "ftp://x.y"],
)
def test_bad_cors_origins_are_one_clear_error(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^CORS_ORIGINS has"):
        cors_origins({"CORS_ORIGINS": value})


def test_any_origin_is_allowed_only_alone() -> None:
    assert cors_origins({"CORS_ORIGINS": "*"}) == ["*"]
    assert cors_origins({}) is None
