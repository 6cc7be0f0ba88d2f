"""Every error is an RFC 9457 problem document, and none leaks internals."""

from __future__ import annotations

import logging

import pytest
from flask import Flask, abort
from flask.testing import FlaskClient
from pydantic import BaseModel
from spectree import Response as Responses
from werkzeug.exceptions import ServiceUnavailable

from {{ cookiecutter.package_name }}.errors import (
    MAX_FIELD_ERRORS,
    PROBLEM_MEDIA_TYPE,
    RequestValidationError,
    field_path,
    reject_invalid_request,
)
from {{ cookiecutter.package_name }}.extensions import spec


def assert_problem(response_json: object, status: int) -> None:
    assert isinstance(response_json, dict)
    assert response_json["type"] == "about:blank"
    assert response_json["status"] == status
    assert response_json["title"]
    assert response_json["detail"]


def test_unknown_url_is_a_404_problem(client: FlaskClient) -> None:
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    body = response.json
    assert isinstance(body, dict)
    assert body == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": body["detail"],
        "request_id": response.headers["X-Request-ID"],
    }
    assert "not found" in body["detail"].lower()


def test_wrong_method_is_a_405_problem_with_allow(client: FlaskClient) -> None:
    response = client.put("/health/live")
    assert response.status_code == 405
    assert_problem(response.json, 405)
    assert "GET" in response.headers["Allow"]


def test_abort_keeps_its_description(app: Flask, client: FlaskClient) -> None:
    @app.get("/teapot")
    def teapot() -> str:
        abort(418, description="Short and stout.")

    response = client.get("/teapot")
    assert response.status_code == 418
    assert response.json is not None
    assert response.json["detail"] == "Short and stout."
    assert response.json["title"] == "I'm a teapot"


def test_unhandled_exception_is_a_bare_500(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("database password is hunter2")

    with caplog.at_level(logging.ERROR):
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert_problem(response.json, 500)
    body = response.get_data(as_text=True)
    assert "hunter2" not in body
    assert "Traceback" not in body
    assert "RuntimeError" not in body
    # The traceback goes to the server log instead.
    assert any(
        record.exc_info and "hunter2" in str(record.exc_info[1])
        for record in caplog.records
    )


def test_response_that_breaks_its_schema_is_a_500(
    app: Flask, client: FlaskClient
) -> None:
    class Strict(BaseModel):
        count: int

    @app.get("/broken-contract")
    @spec.validate(resp=Responses(HTTP_200=Strict))
    def broken_contract() -> dict[str, str]:
        return {"count": "not a number"}

    response = client.get("/broken-contract")
    assert response.status_code == 500
    assert_problem(response.json, 500)
    assert "not a number" not in response.get_data(as_text=True)


def test_request_hook_reraises_errors_it_does_not_know() -> None:
    with pytest.raises(KeyError):
        reject_invalid_request(None, None, KeyError("odd"), None, None)


def test_validation_error_lists_each_field(client: FlaskClient) -> None:
    response = client.post("/api/v1/items", json={"name": "", "quantity": -1})
    assert response.status_code == 422
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert_problem(response.json, 422)
    assert response.json is not None
    fields = {error["field"] for error in response.json["errors"]}
    assert fields == {"name", "quantity"}
    for error in response.json["errors"]:
        assert set(error) == {"field", "message", "code"}


def test_validation_error_carries_its_errors() -> None:
    error = RequestValidationError([])
    assert error.errors == []
    assert "0 invalid field" in str(error)


def test_a_422_is_bounded_however_many_fields_are_wrong(client: FlaskClient) -> None:
    # 90 unknown members and a missing name: 91 errors, 20 listed.
    body = {f"unknown_{number}": "x" * 1000 for number in range(90)}
    response = client.post("/api/v1/items", json=body)
    assert response.status_code == 422
    assert response.json is not None
    assert len(response.json["errors"]) == MAX_FIELD_ERRORS
    assert "91 fields are invalid; the first 20 are listed" in response.json["detail"]
    # The answer is small and never repeats the values sent.
    assert len(response.get_data()) < 4000
    assert "xxxx" not in response.get_data(as_text=True)


def test_a_422_cuts_long_field_names(client: FlaskClient) -> None:
    response = client.post("/api/v1/items", json={"name": "Widget", "k" * 50_000: 1})
    assert response.status_code == 422
    assert response.json is not None
    (error,) = response.json["errors"]
    assert error["field"] == "k" * 97 + "..."
    assert len(response.get_data()) < 1000


def test_field_paths_join_names_and_indexes() -> None:
    assert field_path(("items", 0, "name")) == "items.0.name"
    assert field_path(()) == "body"


@pytest.mark.parametrize("status", [429, 503])
def test_retryable_problems_say_when_to_retry(
    app: Flask, client: FlaskClient, status: int
) -> None:
    @app.get("/busy")
    def busy() -> str:
        abort(status)

    response = client.get("/busy")
    assert response.status_code == status
    assert response.headers["Retry-After"] == str(app.config["RETRY_AFTER_UNAVAILABLE"])
    assert_problem(response.json, status)


def test_a_retry_after_from_the_error_wins(app: Flask, client: FlaskClient) -> None:
    @app.get("/later")
    def later() -> str:
        raise ServiceUnavailable(retry_after=42)

    assert client.get("/later").headers["Retry-After"] == "42"
