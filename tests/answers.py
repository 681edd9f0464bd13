"""What the tests of the protocol share: the broker's answer formats and small request helpers."""

from __future__ import annotations

import json
import re

JSON_TYPE = "application/json; charset=UTF-8"
JSONP_TYPE = "application/javascript; charset=UTF-8"
TEXT_TYPE = "text/plain; charset=UTF-8"
REDIS_FIELD = re.compile(r"<Redis Connection: unix:/.+/valkey\.sock - ([1-9]|10) connection\(s\)>")


def line(obj) -> bytes:
    """A JSON answer as the broker writes it: the original's separators, then CRLF."""
    return (json.dumps(obj) + "\r\n").encode()


def jsonp(callback: str, obj) -> bytes:
    return f"{callback}({json.dumps(obj)});\r\n".encode()


def assert_answer(response, body: bytes, status: int = 200, content_type: str = JSON_TYPE):
    assert (response.status, response.body) == (status, body)
    assert response.headers["content-type"] == content_type


def assert_error(response, status: int, starts_with: str = ""):
    """A 4xx/5xx is a JSON object {"error": text} and CRLF, never an HTML page."""
    assert response.status == status, response.body
    assert response.headers["content-type"] == JSON_TYPE
    assert response.body.endswith(b"}\r\n")
    error = response.json()["error"]
    assert list(response.json()) == ["error"]
    assert error.startswith(starts_with), error
    return error


def post_value(broker, queue: str, value: str, **extra) -> str:
    response = broker.post(f"/q/{queue}", value=value, **extra)
    assert response.status == 200, response.body
    return response.text.removesuffix("\r\n")


def post_json(broker, path: str, payload, raw: bytes | None = None):
    """POST ``payload`` (or the ``raw`` bytes) as an application/json body."""
    body = raw if raw is not None else json.dumps(payload).encode()
    return broker.request("POST", path, body=body, headers={"Content-Type": "application/json"})


def command(broker, cmd, path: str = "/queue", field: str = "body"):
    """A JSON-protocol command, sent as the original's form field ``body`` (or ``msg``)."""
    return broker.post(path, **{field: json.dumps(cmd)})
