"""The items API: the happy paths and every way a request can be wrong."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import problem

ITEMS = "/api/v1/items"


def create(client: FlaskClient, **fields: Any) -> dict[str, Any]:
    response = client.post(ITEMS, json={"name": "Widget", **fields})
    assert response.status_code == 201, response.json
    assert isinstance(response.json, dict)
    return response.json


def error_fields(body: dict[str, Any]) -> set[str]:
    return {error["field"] for error in body["errors"]}


def test_create_returns_the_item_and_its_location(client: FlaskClient) -> None:
    response = client.post(
        ITEMS, json={"name": "Widget", "description": "Blue", "quantity": 3}
    )
    assert response.status_code == 201
    item = response.json
    assert isinstance(item, dict)
    assert item["name"] == "Widget"
    assert item["description"] == "Blue"
    assert item["quantity"] == 3
    assert response.headers["Location"] == f"{ITEMS}/{item['id']}"
    created = datetime.fromisoformat(item["created_at"])
    assert created.tzinfo is not None


def test_create_uses_defaults(client: FlaskClient) -> None:
    item = create(client)
    assert item["description"] is None
    assert item["quantity"] == 0


def test_get_returns_the_item(client: FlaskClient) -> None:
    item = create(client)
    response = client.get(f"{ITEMS}/{item['id']}")
    assert response.status_code == 200
    assert response.json == item


def test_list_paginates_oldest_first(client: FlaskClient) -> None:
    for number in range(5):
        create(client, name=f"Item {number}")
    response = client.get(f"{ITEMS}?page=2&per_page=2")
    assert response.status_code == 200
    page = response.json
    assert isinstance(page, dict)
    assert [item["name"] for item in page["items"]] == ["Item 2", "Item 3"]
    assert (page["page"], page["per_page"], page["total"], page["pages"]) == (
        2,
        2,
        5,
        3,
    )


def test_list_of_nothing_is_an_empty_page(client: FlaskClient) -> None:
    response = client.get(ITEMS)
    assert response.status_code == 200
    assert response.json == {
        "items": [],
        "page": 1,
        "per_page": 20,
        "total": 0,
        "pages": 0,
    }


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page=0", "page"),
        ("per_page=101", "per_page"),
        ("per_page=abc", "per_page"),
        ("page=1_0", "page"),
        ("page=%201", "page"),
        ("page=1.0", "page"),
        ("page=%D9%A1", "page"),
        ("sort=name", "sort"),
    ],
)
def test_list_rejects_bad_query_parameters(
    client: FlaskClient, query: str, field: str
) -> None:
    body = problem(client.get(f"{ITEMS}?{query}"), 422)
    assert error_fields(body) == {field}


def test_patch_changes_only_the_given_fields(client: FlaskClient) -> None:
    item = create(client, description="Old", quantity=1)
    response = client.patch(f"{ITEMS}/{item['id']}", json={"quantity": 9})
    assert response.status_code == 200
    updated = response.json
    assert isinstance(updated, dict)
    assert updated["quantity"] == 9
    assert updated["description"] == "Old"
    assert updated["name"] == item["name"]
    assert updated["updated_at"] >= item["updated_at"]


def test_patch_can_clear_the_description(client: FlaskClient) -> None:
    item = create(client, description="Old")
    response = client.patch(f"{ITEMS}/{item['id']}", json={"description": None})
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["description"] is None


@pytest.mark.parametrize("field", ["name", "quantity"])
def test_patch_refuses_null_for_required_fields(
    client: FlaskClient, field: str
) -> None:
    item = create(client)
    body = problem(client.patch(f"{ITEMS}/{item['id']}", json={field: None}), 422)
    assert error_fields(body) == {field}


@pytest.mark.parametrize(
    ("payload", "field", "code"),
    [
        ({"quantity": -1}, "quantity", "greater_than_equal"),
        ({"quantity": "3"}, "quantity", "int_type"),
        ({"name": ""}, "name", "string_too_short"),
        ({"name": 7}, "name", "string_type"),
        ({"description": 7}, "description", "string_type"),
        ({"colour": "red"}, "colour", "extra_forbidden"),
    ],
)
def test_patch_names_fields_as_the_client_sent_them(
    client: FlaskClient, payload: dict[str, Any], field: str, code: str
) -> None:
    item = create(client)
    body = problem(client.patch(f"{ITEMS}/{item['id']}", json=payload), 422)
    assert body["errors"] == [
        {"field": field, "message": body["errors"][0]["message"], "code": code}
    ]


def test_patch_needs_at_least_one_field(client: FlaskClient) -> None:
    item = create(client)
    body = problem(client.patch(f"{ITEMS}/{item['id']}", json={}), 422)
    assert "at least one" in body["errors"][0]["message"]


def test_delete_removes_the_item(client: FlaskClient) -> None:
    item = create(client)
    response = client.delete(f"{ITEMS}/{item['id']}")
    assert response.status_code == 204
    assert response.get_data() == b""
    assert "Content-Type" not in response.headers
    problem(client.get(f"{ITEMS}/{item['id']}"), 404)


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_missing_item_is_a_404_problem(client: FlaskClient, method: str) -> None:
    response = getattr(client, method)(f"{ITEMS}/4242", json={"name": "x"})
    body = problem(response, 404)
    assert body["detail"] == "Item 4242 does not exist."


@pytest.mark.parametrize(
    "item_id",
    ["0", "-1", "abc", "99999999999999999999", "2147483648", "9999999999"],
)
def test_ids_outside_the_valid_range_are_404(client: FlaskClient, item_id: str) -> None:
    for method in ("get", "patch", "delete"):
        response = getattr(client, method)(f"{ITEMS}/{item_id}", json={"name": "x"})
        problem(response, 404)


@pytest.mark.parametrize("spelling", ["01", "0001", "%D9%A1", "%EF%BC%91", "+1"])
def test_an_item_has_one_url(client: FlaskClient, spelling: str) -> None:
    item = create(client)
    assert item["id"] == 1
    problem(client.get(f"{ITEMS}/{spelling}"), 404)


def test_malformed_json_is_a_400(client: FlaskClient) -> None:
    response = client.post(
        ITEMS, data='{"name": "Widget",', content_type="application/json"
    )
    body = problem(response, 400)
    assert body["detail"] == "The request body is not valid JSON."


def test_deeply_nested_json_is_a_400(client: FlaskClient) -> None:
    response = client.post(ITEMS, data="[" * 100_000, content_type="application/json")
    body = problem(response, 400)
    assert body["detail"] == "The request body is nested too deeply."


def test_empty_body_is_a_400(client: FlaskClient) -> None:
    problem(client.post(ITEMS, data="", content_type="application/json"), 400)


@pytest.mark.parametrize("payload", ["[]", '"Widget"', "null", "42"])
def test_body_must_be_a_json_object(client: FlaskClient, payload: str) -> None:
    body = problem(
        client.post(ITEMS, data=payload, content_type="application/json"), 400
    )
    assert body["detail"] == "The request body must be a JSON object."


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", None]
)
def test_wrong_content_type_is_a_415(
    client: FlaskClient, content_type: str | None
) -> None:
    response = client.post(ITEMS, data='{"name": "Widget"}', content_type=content_type)
    body = problem(response, 415)
    assert "application/json" in body["detail"]


def test_body_over_the_limit_is_a_413(app: Flask, client: FlaskClient) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    response = client.post(ITEMS, json={"name": "x", "description": "y" * limit})
    problem(response, 413)


@pytest.mark.parametrize(
    ("payload", "field", "code"),
    [
        ({}, "name", "missing"),
        ({"name": 42}, "name", "string_type"),
        ({"name": ""}, "name", "string_too_short"),
        ({"name": "   "}, "name", "string_pattern_mismatch"),
        ({"name": "a\u0000b"}, "name", "string_pattern_mismatch"),
        ({"name": "x" * 201}, "name", "string_too_long"),
        ({"name": "Widget", "quantity": "3"}, "quantity", "int_type"),
        ({"name": "Widget", "quantity": 1.5}, "quantity", "int_from_float"),
        ({"name": "Widget", "quantity": None}, "quantity", "int_type"),
        ({"name": "Widget", "quantity": True}, "quantity", "int_type"),
        ({"name": "Widget", "quantity": -1}, "quantity", "greater_than_equal"),
        ({"name": "Widget", "quantity": 2**31}, "quantity", "less_than_equal"),
        ({"name": "Widget", "description": "a\u0000b"}, "description", None),
        ({"name": "\ufeff"}, "name", "string_pattern_mismatch"),
        ({"name": "\u200b\u200b"}, "name", "string_pattern_mismatch"),
        ({"name": "\u0085"}, "name", "string_pattern_mismatch"),
        ({"name": "a\u009bb"}, "name", "string_pattern_mismatch"),
        ({"name": "abc\u202etxt.exe"}, "name", "string_pattern_mismatch"),
        # Fillers, marks and blanks that render as nothing at all.
        ({"name": "\u061c"}, "name", "string_pattern_mismatch"),
        ({"name": "\u3164"}, "name", "string_pattern_mismatch"),
        ({"name": "\u2800\u034f"}, "name", "string_pattern_mismatch"),
        ({"name": "\ufe0f\uffa0\u115f"}, "name", "string_pattern_mismatch"),
        ({"name": "x", "description": "a\u2066b"}, "description", None),
        # Tags hide text in a plane of their own; noncharacters and line
        # separators are not text to show (a description's lines end in \n).
        ({"name": "Widget\U000e0041\U000e0042"}, "name", "value_error"),
        ({"name": "\U000e0041"}, "name", "value_error"),
        ({"name": "Widget\uffff"}, "name", "string_pattern_mismatch"),
        ({"name": "Widget\ufdd0"}, "name", "string_pattern_mismatch"),
        ({"name": "Widget\U0010ffff"}, "name", "value_error"),
        ({"name": "one\u2028two"}, "name", "string_pattern_mismatch"),
        ({"name": "x", "description": "one\u2028two"}, "description", None),
        ({"name": "x", "description": "a\U000e0069b"}, "description", None),
        ({"name": "x", "description": "a\U0001fffeb"}, "description", None),
        ({"name": "Widget", "colour": "red"}, "colour", "extra_forbidden"),
    ],
)
def test_create_names_each_invalid_field(
    client: FlaskClient, payload: dict[str, Any], field: str, code: str | None
) -> None:
    body = problem(client.post(ITEMS, json=payload), 422)
    assert error_fields(body) == {field}
    if code is not None:
        assert body["errors"][0]["code"] == code


def test_validation_errors_do_not_echo_the_input(client: FlaskClient) -> None:
    response = client.post(ITEMS, json={"name": "Widget", "quantity": "s3cr3t"})
    problem(response, 422)
    assert "s3cr3t" not in response.get_data(as_text=True)


def test_whole_floats_are_integers(client: FlaskClient) -> None:
    # JSON Schema (and so every OpenAPI client) counts 3.0 as an integer.
    assert create(client, quantity=3.0)["quantity"] == 3


@pytest.mark.parametrize(
    "name",
    [
        "\U0001f469\u200d\U0001f4bb",  # an emoji joined by a zero-width joiner
        "\u0645\u06cc\u200c\u0631\u0648\u0645",  # Persian, with a non-joiner
        "\u05e9\u05dc\u05d5\u05dd \u200fA",  # Hebrew with a right-to-left mark
        "Zo\u00eb\u00a0Widget",
    ],
)
def test_names_in_any_script_are_stored(client: FlaskClient, name: str) -> None:
    assert create(client, name=name)["name"] == name


def test_multiline_descriptions_are_allowed(client: FlaskClient) -> None:
    item = create(client, description="line one\nline two\ttabbed")
    assert item["description"] == "line one\nline two\ttabbed"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(body=st.binary(max_size=512))
def test_arbitrary_bytes_never_cause_a_server_error(
    client: FlaskClient, body: bytes
) -> None:
    response = client.post(ITEMS, data=body, content_type="application/json")
    assert response.status_code in {201, 400, 422}
    if response.status_code != 201:
        problem(response, response.status_code)


@FUZZ
@given(payload=JSON_VALUES)
def test_arbitrary_json_never_causes_a_server_error(
    client: FlaskClient, payload: Any
) -> None:
    response = client.post(
        ITEMS, data=json.dumps(payload), content_type="application/json"
    )
    assert response.status_code in {201, 400, 422}
    if response.status_code != 201:
        problem(response, response.status_code)


@FUZZ
@given(item=st.fixed_dictionaries({"name": st.text(), "quantity": st.integers()}))
def test_arbitrary_items_are_stored_or_rejected_cleanly(
    client: FlaskClient, item: dict[str, Any]
) -> None:
    response = client.post(ITEMS, json=item)
    if response.status_code == 201:
        stored = client.get(response.headers["Location"]).json
        assert stored is not None
        assert (stored["name"], stored["quantity"]) == (item["name"], item["quantity"])
    else:
        assert error_fields(problem(response, 422)) <= {"name", "quantity"}
