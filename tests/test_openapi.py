"""The OpenAPI description (``restmq/openapi.json``): a valid document, served at
``/openapi.json``, and true of a live broker that schemathesis fuzzes against it."""

from __future__ import annotations

import functools
import json
import re

import pytest
import schemathesis
from cyclone.web import URLSpec
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

import restmq
from restmq.web.app import routes
from restmq.web.handlers.base import allowed_methods
from restmq.web.handlers.websocket import WebSocketHandler
from tests.support import (
    OPENAPI_PATH,
    Broker,
    openapi_at,
    openapi_document,
    openapi_response,
    openapi_validator,
)

HTTP_METHODS = {"get", "head", "post", "put", "patch", "delete", "options", "trace"}

# Streams never end on their own, so they are documented but not fuzzed.
STREAMS = r"^/(c|ws)/"
JSONP = re.compile(r"(?P<callback>[A-Za-z_$][\w$.]*)\((?P<json>.*)\);\r\n", re.DOTALL)
TEXT_ANSWER = re.compile(r"OK|[A-Za-z0-9_\-.:@]+:[0-9]+")


@functools.cache
def validator_for(path: str, method: str, status: str) -> Draft202012Validator | None:
    """A validator of the application/json answer documented for this status, if any."""
    where = openapi_response(path, method, status)
    if where is None:
        return None
    if "schema" not in openapi_at(*where).get("content", {}).get("application/json", {}):
        return None
    return openapi_validator(*where, "content", "application/json", "schema")


@schemathesis.check
def jsonp_wraps_the_documented_json(ctx, response, case):
    """A JSONP answer is ``callback(<json>);`` and CRLF, with the callback the client
    named, around the JSON the same status answers as application/json (or a string)."""
    content_type = (response.headers.get("content-type") or [""])[0]
    if not content_type.startswith("application/javascript"):
        return None
    wrapped = JSONP.fullmatch(response.text)
    assert wrapped, f"not JSONP: {response.text[:200]!r}"
    assert wrapped["callback"] == (case.query or {}).get("callback")
    inner = json.loads(wrapped["json"])
    validator = validator_for(case.operation.path, case.method.lower(), str(response.status_code))
    if isinstance(inner, str):  # what answers bare as text/plain: a key, or OK
        assert TEXT_ANSWER.fullmatch(inner), inner
    else:
        assert validator is not None, f"no JSON answer is documented for {response.status_code}"
        validator.validate(inner)
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,  # 405, with Allow, for every method a route does not list
    jsonp_wraps_the_documented_json,
]

EXAMPLE_QUEUES = ("test", "genesis")
JSON_BODY = {"Content-Type": "application/json"}

CONFIG = schemathesis.Config.from_dict({"seed": 20091, "generation": {"deterministic": True}})
SCHEMA = schemathesis.openapi.from_path(OPENAPI_PATH, config=CONFIG).exclude(path_regex=STREAMS)
LONGEST_FUZZED_WAIT = 1  # seconds: a long poll on an empty queue waits all of its `wait`


@SCHEMA.hook
def map_query(ctx, query):
    """Long polls are fuzzed like any GET, but kept short."""
    if query and isinstance(query.get("wait"), int):
        query["wait"] = min(query["wait"], LONGEST_FUZZED_WAIT)
    return query


@pytest.fixture(scope="module")
def fuzzed_broker(tmp_path_factory):
    """A broker of its own (the fuzzer purges, stops and fills queues at random), with
    messages waiting in the queues the document's examples name, so that pops answer
    messages, not only empty queues."""
    broker = Broker(tmp_path_factory.mktemp("fuzzed-broker"))
    broker.start()
    for queue in EXAMPLE_QUEUES:
        values = [f"waiting {n}" for n in range(200)]
        response = broker.request(
            "POST", f"/q/{queue}", body=json.dumps({"values": values}), headers=JSON_BODY
        )
        assert response.status == 200, response.body
    yield broker
    broker.stop()


def test_the_document_is_valid_openapi_3_1():
    spec = openapi_document()
    validate(spec)  # raises on the first error
    assert spec["openapi"].startswith("3.1.")
    assert spec["info"]["version"] == restmq.__version__


def route_table() -> list[tuple[re.Pattern, type]]:
    """(path pattern, handler class) of every route the broker serves."""
    table = []
    for spec in routes():
        if isinstance(spec, URLSpec):
            table.append((spec.regex, spec.handler_class))
        else:
            pattern, handler = spec[:2]
            table.append((re.compile(pattern + "$"), handler))
    return table


def methods_of(handler: type) -> set[str]:
    if handler is WebSocketHandler:
        return {"GET"}  # it takes the request over before cyclone's method dispatch
    return set(allowed_methods(handler))


def test_every_route_and_method_is_documented_and_nothing_else():
    table = route_table()
    documented = {
        re.sub(r"\{[^}]+\}", "x", path): {m.upper() for m in item if m in HTTP_METHODS}
        for path, item in openapi_document()["paths"].items()
    }
    for pattern, _ in table:
        assert any(pattern.match(path) for path in documented), f"{pattern.pattern} is undocumented"
    for path, methods in documented.items():
        handlers = [handler for pattern, handler in table if pattern.match(path)]
        assert handlers, f"{path} is documented but not routed"
        assert methods == methods_of(handlers[0]), path


def test_the_broker_serves_the_document_as_it_is_shipped(shared_broker):
    response = shared_broker.get("/openapi.json")
    assert response.status == 200
    assert response.headers["content-type"] == "application/json; charset=UTF-8"
    assert response.body == OPENAPI_PATH.read_bytes()
    assert json.loads(response.body)["paths"]["/q/{queue}"]["post"]


@SCHEMA.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_broker_answers_as_documented(case, fuzzed_broker):
    case.call_and_validate(
        base_url=f"http://127.0.0.1:{fuzzed_broker.port}", checks=CHECKS, timeout=10
    )
