"""A method a route does not take: 405, with the Allow header RFC 9110 requires."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/q/jobs", {"GET", "POST", "DELETE"}),
        ("TRACE", "/q/jobs", {"GET", "POST", "DELETE"}),
        ("DELETE", "/", {"GET", "POST"}),
        ("GET", "/xmlrpc", {"POST"}),
        ("PATCH", "/stats/", {"GET"}),
        ("DELETE", "/openapi.json", {"GET"}),
        ("POST", "/static/index.html", {"GET", "HEAD"}),
    ],
)
def test_a_wrong_method_is_answered_405_with_the_methods_the_route_takes(
    shared_broker, method, path, allowed
):
    response = shared_broker.request(method, path)
    assert response.status == 405
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed
    assert response.headers["content-type"] == "application/json; charset=UTF-8"
    assert json.loads(response.body) == {"error": f"method {method} is not allowed on {path}"}
