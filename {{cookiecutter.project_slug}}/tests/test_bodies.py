"""Request and response bodies: one size limit, strict JSON, empty 204s."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from flask import Flask, session
from flask.testing import FlaskClient

from {{ cookiecutter.package_name }}.bodies import StrictJSONProvider
from {{ cookiecutter.package_name }}.errors import PROBLEM_MEDIA_TYPE

from conftest import AppFactory, signed_in

ITEMS = "/api/v1/items"


def post_chunked(client: FlaskClient, body: bytes, path: str = ITEMS) -> Any:
    """POST `body` as a chunked request: no Content-Length, as a server decodes it."""
    return client.post(
        path,
        input_stream=io.BytesIO(body),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def item_count(client: FlaskClient) -> int:
    page = client.get(ITEMS).json
    assert page is not None
    return int(page["total"])


def test_a_chunked_body_over_the_limit_is_a_413(
    app: Flask, client: FlaskClient
) -> None:
    # Valid JSON padded past the limit: cut at the limit, it would still parse.
    body = b'{"name": "Widget"}' + b" " * app.config["MAX_CONTENT_LENGTH"]
    response = post_chunked(client, body)
    assert response.status_code == 413
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert item_count(client) == 0


def test_a_chunked_body_one_byte_over_the_limit_is_a_413(
    app: Flask, client: FlaskClient
) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    description = "y" * (limit - len('{"name": "x", "description": ""}') + 1)
    body = json.dumps({"name": "x", "description": description}).encode()
    assert len(body) == limit + 1
    assert post_chunked(client, body).status_code == 413
    assert item_count(client) == 0


def test_a_chunked_body_within_the_limit_is_read_whole(client: FlaskClient) -> None:
    response = post_chunked(client, b'{"name": "Chunked", "quantity": 2}')
    assert response.status_code == 201
    assert response.json is not None
    assert (response.json["name"], response.json["quantity"]) == ("Chunked", 2)


def test_an_oversized_body_is_refused_even_where_no_view_reads_it(
    app: Flask, client: FlaskClient
) -> None:
    too_big = b"x" * (app.config["MAX_CONTENT_LENGTH"] + 1)
    response = client.get("/health/live", data=too_big)
    assert response.status_code == 413
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert post_chunked(client, too_big, "/health/live").status_code == 413


def test_a_chunked_body_the_server_did_not_decode_is_empty(
    client: FlaskClient,
) -> None:
    # Without wsgi.input_terminated, Werkzeug does not read a body that has no
    # length, so there is nothing to measure: the view sees an empty body.
    response = client.post(
        ITEMS,
        input_stream=io.BytesIO(b'{"name": "x"}'),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert item_count(client) == 0


def test_without_a_limit_any_body_is_accepted(make_app: AppFactory) -> None:
    app = make_app(MAX_CONTENT_LENGTH=None, tables=True)
    body = b'{"name": "Big", "description": "' + b"d" * 2000 + b'"}'
    assert post_chunked(signed_in(app)[0], body).status_code == 201


def test_a_body_shorter_than_its_length_is_refused(client: FlaskClient) -> None:
    # The client promised 1000 bytes and stopped: a server that decodes the
    # stream hands over what arrived, which here is valid JSON.
    response = client.post(
        ITEMS,
        input_stream=io.BytesIO(b'{"name": "truncated"}'),
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": "1000"},
    )
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["detail"] == (
        "The request body is shorter than its Content-Length."
    )
    assert item_count(client) == 0


class BrokenFraming(io.BytesIO):
    """A request stream whose chunked framing is invalid, as a server reports it."""

    def read(self, _size: int | None = -1) -> bytes:
        raise ValueError("Invalid chunk size")


def test_broken_chunked_framing_is_a_400(client: FlaskClient) -> None:
    for path in (ITEMS, "/health/live"):
        response = client.post(
            path,
            input_stream=BrokenFraming(),
            content_type="application/json",
            headers={"Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )
        assert response.status_code == 400, path
        assert response.mimetype == PROBLEM_MEDIA_TYPE


def test_requests_without_a_body_pass(client: FlaskClient) -> None:
    response = client.get(
        "/health/live", environ_overrides={"wsgi.input_terminated": True}
    )
    assert response.status_code == 200


def test_compressed_bodies_are_refused(client: FlaskClient) -> None:
    response = client.post(
        ITEMS,
        data=b'{"name": "x"}',
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 415
    assert item_count(client) == 0


def test_unknown_transfer_codings_are_refused(client: FlaskClient) -> None:
    response = client.post(
        ITEMS,
        input_stream=io.BytesIO(b'{"name": "x"}'),
        headers={
            "Transfer-Encoding": "gzip, chunked",
            "Content-Type": "application/json",
        },
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 501
    assert item_count(client) == 0


def test_numbers_with_too_many_digits_are_refused(client: FlaskClient) -> None:
    body = '{"name": "x", "quantity": ' + "9" * 101 + "}"
    response = client.post(ITEMS, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["detail"] == "A number in the body has more than 100 digits."
    big_but_fine = '{"name": "x", "quantity": ' + "9" * 100 + "}"
    assert (
        client.post(
            ITEMS, data=big_but_fine, content_type="application/json"
        ).status_code
        == 422
    )


@pytest.mark.parametrize(
    ("number", "detail"),
    [
        ("1." + "0" * 100_000, "A number in the body has more than 100 digits."),
        ("1e999", "A number in the body is too large."),
        ("-1e400", "A number in the body is too large."),
        ("NaN", "NaN is not a JSON value."),
        ("Infinity", "Infinity is not a JSON value."),
        ("-Infinity", "-Infinity is not a JSON value."),
    ],
)
def test_floats_and_constants_are_bounded_too(
    client: FlaskClient, number: str, detail: str
) -> None:
    body = '{"name": "x", "quantity": ' + number + "}"
    response = client.post(ITEMS, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["detail"] == detail
    assert item_count(client) == 0


def test_repeated_members_are_refused(client: FlaskClient) -> None:
    response = client.post(
        ITEMS,
        data='{"name": "Widget", "quantity": 1, "quantity": 2}',
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["detail"] == (
        "A JSON object in the body repeats the member 'quantity'."
    )
    assert item_count(client) == 0


def test_repeated_members_are_refused_at_any_depth(client: FlaskClient) -> None:
    response = client.post(
        ITEMS,
        data='{"name": "Widget", "extra": {"a": 1, "a": 1}}',
        content_type="application/json",
    )
    assert response.status_code == 400


def test_quoted_member_names_are_cut_short(client: FlaskClient) -> None:
    key = "k" * 5000
    body = '{"' + key + '": 1, "' + key + '": 2}'
    response = client.post(ITEMS, data=body, content_type="application/json")
    assert response.status_code == 400
    assert len(response.get_data()) < 500


def test_objects_with_too_many_members_are_refused(
    app: Flask, client: FlaskClient
) -> None:
    limit = app.config["MAX_JSON_OBJECT_MEMBERS"]
    body = {f"field_{number}": number for number in range(limit + 1)}
    response = client.post(ITEMS, json=body)
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["detail"] == (
        f"A JSON object in the body has more than {limit} members."
    )


def test_hooks_of_other_callers_are_kept(app: Flask) -> None:
    # Flask's session serializer passes its own object_hook.
    provider = app.json
    assert isinstance(provider, StrictJSONProvider)
    assert provider.loads('{"a": 1, "a": 2}', object_hook=dict) == {"a": 2}


def test_sessions_still_round_trip(app: Flask) -> None:
    @app.get("/remember")
    def remember() -> str:
        session["value"] = ("a", b"bytes")
        return "ok"

    @app.get("/recall")
    def recall() -> str:
        return repr(session["value"])

    client = app.test_client()
    client.get("/remember")
    assert client.get("/recall").get_data(as_text=True) == "('a', b'bytes')"


def test_options_answers_have_no_content_type(client: FlaskClient) -> None:
    response = client.options(ITEMS)
    assert response.status_code == 200
    assert "POST" in response.headers["Allow"]
    assert "Content-Type" not in response.headers


@pytest.mark.parametrize("status", [204, 304])
def test_empty_answers_have_no_content_type(
    app: Flask, client: FlaskClient, status: int
) -> None:
    @app.get("/empty")
    def empty() -> tuple[str, int]:
        return "", status

    response = client.get("/empty")
    assert response.status_code == status
    assert "Content-Type" not in response.headers
    assert response.get_data() == b""
