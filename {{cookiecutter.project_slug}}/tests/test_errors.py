"""Every error is an RFC 9457 problem document, and none leaks internals."""

from __future__ import annotations

import logging

import pytest
from flask import Flask, abort
from flask.testing import FlaskClient
from pydantic import BaseModel
from spectree import Response as Responses

from {{ cookiecutter.package_name }}.errors import (
    PROBLEM_MEDIA_TYPE,
    RequestValidationError,
    reject_invalid_request,
    reject_invalid_response,
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


def test_request_hook_ignores_valid_requests() -> None:
    reject_invalid_request(None, None, None, None, None)
    reject_invalid_response(None, None, None, None, None)


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
