"""The OpenAPI document, the offline docs page, and a schemathesis run over both."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import CheckFunction
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import select

from {{ cookiecutter.package_name }}.api.docs import SWAGGER_UI_VERSION
from {{ cookiecutter.package_name }}.errors import PROBLEM_MEDIA_TYPE
from {{ cookiecutter.package_name }}.extensions import db
from {{ cookiecutter.package_name }}.models import ApiKey

from conftest import AppFactory, FakeUpstream, add_account, signed_in

ITEMS = "/api/v1/items"
TOKEN = "/api/v1/auth/token"
PROBLEM_SCHEMAS = {
    "#/components/schemas/Problem",
    "#/components/schemas/ValidationProblem",
}
# Clients are generated from these: renaming one breaks them.
OPERATION_IDS = {
    ("/api/v1/items", "get"): "list_items",
    ("/api/v1/items", "post"): "create_item",
    ("/api/v1/items/{item_id}", "get"): "get_item",
    ("/api/v1/items/{item_id}", "patch"): "update_item",
    ("/api/v1/items/{item_id}", "delete"): "delete_item",
    ("/api/v1/items/{item_id}/price", "get"): "get_item_price",
    ("/api/v1/auth/register", "post"): "register",
    ("/api/v1/auth/token", "post"): "create_token",
    ("/api/v1/auth/refresh", "post"): "refresh_token",
    ("/api/v1/auth/logout", "post"): "logout",
    ("/api/v1/auth/me", "get"): "get_me",
    ("/api/v1/auth/password", "post"): "change_password",
    ("/api/v1/auth/api-keys", "get"): "list_api_keys",
    ("/api/v1/auth/api-keys", "post"): "create_api_key",
    ("/api/v1/auth/api-keys/{key_id}", "delete"): "revoke_api_key",
    ("/api/v1/auth/users", "get"): "list_users",
    ("/api/v1/auth/users/{user_id}", "patch"): "update_user",
    ("/health/live", "get"): "health_live",
    ("/health/dependencies", "get"): "health_dependencies",
    ("/health/ready", "get"): "health_ready",
    ("/health/startup", "get"): "health_startup",
}


def served_document(client: FlaskClient) -> dict[str, Any]:
    document = client.get("/api/openapi.json").json
    assert isinstance(document, dict)
    return document


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def test_document_is_openapi_3_1(client: FlaskClient) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    document = served_document(client)
    assert document["openapi"].startswith("3.1")
    assert {"/api/v1/items", "/api/v1/items/{item_id}", "/health/ready"} <= set(
        document["paths"]
    )
    # Only documented views appear: the docs themselves do not.
    assert "/api/docs" not in document["paths"]
    # Built once per app, then served from the cache.
    assert client.get("/api/openapi.json").json == document


def test_document_passes_openapi_spec_validator(client: FlaskClient) -> None:
    # The validator client, mock and gateway generators rely on.
    validate(served_document(client))


def test_every_operation_has_a_stable_id_and_a_tag(client: FlaskClient) -> None:
    found = {
        (path, method): operation["operationId"]
        for path, method, operation in operations(served_document(client))
    }
    assert found == OPERATION_IDS
    for _, _, operation in operations(served_document(client)):
        assert operation["tags"], operation["operationId"]


def test_problem_responses_use_the_problem_media_type(client: FlaskClient) -> None:
    for _, _, operation in operations(served_document(client)):
        for status, response in operation["responses"].items():
            content = response.get("content", {})
            schemas = {body["schema"].get("$ref") for body in content.values()}
            if schemas & PROBLEM_SCHEMAS:
                assert set(content) == {PROBLEM_MEDIA_TYPE}, (operation, status)
            elif int(status) >= 400 and content:
                # Health reports are the only error bodies that are not problems.
                assert schemas == {"#/components/schemas/HealthReport"}
    create = served_document(client)["paths"]["/api/v1/items"]["post"]["responses"]
    assert set(create["201"]["content"]) == {"application/json"}


def test_signalling_headers_are_documented(client: FlaskClient) -> None:
    paths = served_document(client)["paths"]
    created = paths["/api/v1/items"]["post"]["responses"]["201"]["headers"]
    assert {"Location", "Idempotent-Replayed", "RateLimit-Remaining"} <= set(created)
    listed = paths["/api/v1/items"]["get"]["responses"]["200"]["headers"]
    assert "Idempotent-Replayed" not in listed
    for _, _, operation in operations(served_document(client)):
        for status in ("429", "503"):
            response = operation["responses"].get(status, {})
            if PROBLEM_MEDIA_TYPE in response.get("content", {}):
                assert "Retry-After" in response["headers"], operation["operationId"]
    assert "503" in paths["/api/v1/items/{item_id}"]["get"]["responses"]


# Headers that tell a client something about this answer: each must be in the
# document wherever it is sent.
SIGNALLING_HEADERS = (
    "Location",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
    "Idempotent-Replayed",
    "WWW-Authenticate",
)


def test_every_signalling_header_sent_is_documented(make_app: AppFactory) -> None:
    app = make_app(
        RATE_LIMITS_ENABLED=True,
        RESILIENCE_POLICIES={
            "read": {"limit": "3 per minute"},
            "write": {"limit": "3 per minute", "idempotency": True},
            "pricing": {"limit": "3 per minute", "breaker": "pricing"},
            "login": {"limit": "3 per minute"},
            "login-account": {"limit": "3 per minute"},
            "auth": {"limit": "60 per minute"},
        },
        tables=True,
    )
    client = signed_in(app)[0]
    anonymous = app.test_client()
    wrong = {"email": "writer@example.com", "password": "not the password"}
    document = served_document(client)
    key = {"Idempotency-Key": "documented-1"}
    item = "/api/v1/items/{item_id}"
    answers = [
        ("/api/v1/items", "post", client.post(ITEMS, json={"name": "a"}, headers=key)),
        ("/api/v1/items", "post", client.post(ITEMS, json={"name": "a"}, headers=key)),
        ("/api/v1/items", "post", client.post(ITEMS, json={"name": "b"}, headers=key)),
        ("/api/v1/items", "post", client.post(ITEMS, json={"name": "c"})),
        ("/api/v1/items", "get", client.get(ITEMS)),
        (item, "get", client.get(f"{ITEMS}/1")),
        (item, "patch", client.patch(f"{ITEMS}/1", json={"name": ""})),
        (item, "get", client.get(f"{ITEMS}/2")),
        (f"{item}/price", "get", client.get(f"{ITEMS}/1/price")),
        ("/api/v1/items", "post", anonymous.post(ITEMS, json={"name": "d"})),
        ("/api/v1/auth/token", "post", anonymous.post(TOKEN, json=wrong)),
    ]
    statuses = set()
    for path, method, response in answers:
        statuses.add(response.status_code)
        status = str(response.status_code)
        documented = document["paths"][path][method]["responses"][status]
        sent = {name for name in SIGNALLING_HEADERS if name in response.headers}
        assert sent <= set(documented.get("headers", {})), (path, method, status)
    # Successes, replays, refusals and limits were all looked at.
    assert {200, 201, 401, 422, 429, 503} <= statuses


def test_partial_updates_document_no_defaults(client: FlaskClient) -> None:
    schema = served_document(client)["components"]["schemas"]["ItemUpdate"]
    for name, field in schema["properties"].items():
        assert "default" not in field, name
    assert "required" not in schema
    assert schema["minProperties"] == 1


def test_operations_document_only_the_errors_they_can_return(
    client: FlaskClient,
) -> None:
    paths = served_document(client)["paths"]
    item = paths["/api/v1/items/{item_id}"]
    assert set(item["delete"]["responses"]) == {
        "204",
        "401",
        "403",
        "404",
        "409",
        "422",
        "429",
        "503",
    }
    assert set(item["get"]["responses"]) == {"200", "404", "429", "503"}
    assert "422" in item["patch"]["responses"]
    assert "422" in paths["/api/v1/items"]["get"]["responses"]
    assert set(paths["/health/ready"]["get"]["responses"]) == {"200", "503"}


def test_docs_page_loads_its_assets_from_this_server(client: FlaskClient) -> None:
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'data-spec-url="/api/openapi.json"' in html
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(sources) == 3
    for source in sources:
        assert source.startswith("/api/docs/"), f"{source} is not served locally"
        asset = client.get(source)
        assert asset.status_code == 200, source
        assert asset.get_data()
        asset.close()
    assert "validatorUrl: null" in client.get("/api/docs/init.js").get_data(
        as_text=True
    )


def test_versioned_assets_are_cached_for_a_year(client: FlaskClient) -> None:
    asset = client.get(f"/api/docs/assets/{SWAGGER_UI_VERSION}/swagger-ui.css")
    assert asset.status_code == 200
    assert asset.cache_control.max_age == 365 * 24 * 60 * 60
    assert asset.cache_control.public
    assert asset.cache_control.immutable
    asset.close()


@pytest.mark.parametrize(
    "name",
    [
        "swagger-editor-es-bundle.js.map",
        "swagger-editor-bundle.js",
        "oauth2-redirect.html",
        "index.css",
        "../docs.py",
    ],
)
def test_only_the_files_the_page_needs_are_served(
    client: FlaskClient, name: str
) -> None:
    response = client.get(f"/api/docs/assets/{SWAGGER_UI_VERSION}/{name}")
    assert response.status_code == 404


def test_other_releases_of_the_assets_are_not_served(client: FlaskClient) -> None:
    assert client.get("/api/docs/assets/0.0.1/swagger-ui.css").status_code == 404


def test_a_setting_turns_the_docs_off(make_app: AppFactory) -> None:
    client = make_app(API_DOCS_ENABLED=False).test_client()
    for path in (
        "/api/docs",
        "/api/openapi.json",
        f"/api/docs/assets/{SWAGGER_UI_VERSION}/swagger-ui.css",
    ):
        assert client.get(path).status_code == 404, path
    assert client.get("/health/live").status_code == 200


schema = schemathesis.pytest.from_fixture("api_schema")
# Operations that judge more than a schema can say: a new password must be
# uncommon (auth/passwords.py), an address still one once normalised, a key's
# name free of format characters beyond the pattern's plane (text.plain).
JUDGED_BEYOND_THE_SCHEMA = frozenset(
    {"/api/v1/auth/register", "/api/v1/auth/password", "/api/v1/auth/api-keys"}
)


@pytest.fixture
def api_schema(
    migrated_app: Flask, pricing_upstream: FakeUpstream
) -> schemathesis.schemas.BaseSchema:
    """The app's own document, against a database built by the migrations."""
    migrated_app.config["PRICING_URL"] = pricing_upstream.url
    return schemathesis.openapi.from_wsgi("/api/openapi.json", migrated_app)


@pytest.fixture
def api_key(migrated_app: Flask) -> str:
    """A read-write API key, so that the run reaches the views behind auth."""
    return add_account(migrated_app).api_key


@pytest.fixture
def api_key_id(migrated_app: Flask, api_key: str) -> int:
    """The id of that key (what DELETE /api/v1/auth/api-keys/{key_id} takes)."""
    with migrated_app.app_context():
        key = db.session.scalars(
            select(ApiKey).where(ApiKey.prefix == api_key.split("_")[1])
        ).one()
        return key.id


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_honours_its_schema(
    case: schemathesis.Case[Any], api_key: str, api_key_id: int
) -> None:
    # No 5xx, every status and body documented, invalid input rejected. Each
    # generated request gets a key of its own: reusing one for a different
    # request is a (documented) 422 that says nothing about the request.
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = str(uuid.uuid4())
    # The run's one key revoking itself (a small id: hypothesis tries those
    # first) would make every later request a 401.
    if case.path_parameters and case.path_parameters.get("key_id") == api_key_id:
        case.path_parameters["key_id"] = api_key_id + 1
    # There a schema-valid request may be refused (a 422 naming the field).
    excluded: list[CheckFunction] = (
        [positive_data_acceptance] if case.path in JUDGED_BEYOND_THE_SCHEMA else []
    )
    case.call_and_validate(headers={"X-API-Key": api_key}, excluded_checks=excluded)
