"""The OpenAPI document, the offline docs page, and a schemathesis run over both."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import downgrade, upgrade
from hypothesis import HealthCheck, settings

from {{ cookiecutter.package_name }}.errors import PROBLEM_MEDIA_TYPE
from {{ cookiecutter.package_name }}.extensions import db


def test_document_is_openapi_3_1(client: FlaskClient) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json
    assert isinstance(document, dict)
    assert document["openapi"].startswith("3.1")
    assert {"/api/v1/items", "/api/v1/items/{item_id}", "/health/ready"} <= set(
        document["paths"]
    )
    # Only documented views appear: the docs themselves do not.
    assert "/api/docs" not in document["paths"]
    # Built once per app, then served from the cache.
    assert client.get("/api/openapi.json").json == document


def test_problem_responses_use_the_problem_media_type(client: FlaskClient) -> None:
    document = client.get("/api/openapi.json").json
    assert document is not None
    create = document["paths"]["/api/v1/items"]["post"]["responses"]
    assert set(create["422"]["content"]) == {PROBLEM_MEDIA_TYPE}
    assert set(create["415"]["content"]) == {PROBLEM_MEDIA_TYPE}
    assert set(create["201"]["content"]) == {"application/json"}


def test_operations_document_only_the_errors_they_can_return(
    client: FlaskClient,
) -> None:
    paths = client.get("/api/openapi.json").json["paths"]  # type: ignore[index]
    item = paths["/api/v1/items/{item_id}"]
    assert set(item["delete"]["responses"]) == {"204", "404"}
    assert set(item["get"]["responses"]) == {"200", "404"}
    assert "422" in item["patch"]["responses"]
    assert "422" in paths["/api/v1/items"]["get"]["responses"]
    assert set(paths["/health/ready"]["get"]["responses"]) == {"200", "503"}
    operation_ids = {
        operation["operationId"]
        for operations in paths.values()
        for operation in operations.values()
    }
    assert {"list_items", "create_item", "health_ready"} <= operation_ids


def test_docs_page_loads_its_assets_from_this_server(client: FlaskClient) -> None:
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'data-spec-url="/api/openapi.json"' in html
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources
    for source in sources:
        assert source.startswith("/api/docs/"), f"{source} is not served locally"
        asset = client.get(source)
        assert asset.status_code == 200, source
        assert asset.get_data()
        asset.close()


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def api_schema(empty_app: Flask) -> Iterator[schemathesis.schemas.BaseSchema]:
    """The app's own document, against a database built by the migrations."""
    upgrade()
    yield schemathesis.openapi.from_wsgi("/api/openapi.json", empty_app)
    # The requests shared the fixture's app context: end its transaction first.
    db.session.remove()
    downgrade(revision="base")


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_honours_its_schema(case: schemathesis.Case[Any]) -> None:
    # No 5xx, every status and body documented, invalid input rejected.
    case.call_and_validate()
