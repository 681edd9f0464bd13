"""The OpenAPI description (``restmq/openapi.json``): a valid document, served at
``/openapi.json``, and true of a live broker that schemathesis fuzzes against it."""

from __future__ import annotations

import functools
import json
import re

import pytest
import schemathesis
from cyclone.web import URLSpec
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from schemathesis.engine import Status, from_schema
from schemathesis.engine import events as engine_events

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


LONGEST_WAIT = 60  # seconds: the documented maximum of `wait`, the longest a request waits
# Every phase of `schemathesis run`, every check (`--checks all`), deterministic. Statuses
# beyond schemathesis's defaults are the ones the document states but JSON Schema cannot
# tie to the request: a transport limit any route may answer (431, 411), a route whose
# path names no queue (400 by design), an Idempotency-Key reused with another payload
# (422, also for a JSON command's idempotency_key), and a form `body`, which is JSON
# text only a JSON parser can judge (400).
ALWAYS_400 = {
    "include-operation-id": ["addWithoutQueue", "purgeWithoutQueue", "setStatusWithoutQueue"]
}
JSON_TEXT_FORMS = {"include-operation-id": ["jsonProtocol", "jsonProtocolByPath"]}
IDEMPOTENT_ADDS = {"include-operation-id": ["addToIndex", "add"]}
REFUSED = ["400", "401", "403", "404", "405", "406", "409", "411", "413", "415", "422"]
REFUSED += ["428", "429", "431", "5xx"]
ACCEPTED = ["431", "2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
JSON_TEXT_ANSWERS = [*ACCEPTED, "400", "422"]
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20091,
        "cache": {"enabled": False},  # each run starts from the document alone
        "workers": 1,
        "request-timeout": LONGEST_WAIT + 5,
        "generation": {"deterministic": True, "max-examples": 6, "database": "none"},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": True, "max-steps": 6},
        },
        "checks": {
            "max_response_time": LONGEST_WAIT + 5,
            "negative_data_rejection": {"expected-statuses": REFUSED},
            "positive_data_acceptance": {"expected-statuses": ACCEPTED},
        },
        "operations": [
            {**ALWAYS_400, "checks": {"positive_data_acceptance": {"expected-statuses": ["400"]}}},
            {
                **JSON_TEXT_FORMS,
                "checks": {"positive_data_acceptance": {"expected-statuses": JSON_TEXT_ANSWERS}},
            },
            {
                **IDEMPOTENT_ADDS,
                "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}},
            },
        ],
    }
)
SCHEMA = schemathesis.openapi.from_path(OPENAPI_PATH, config=CONFIG).exclude(path_regex=STREAMS)
SHORTEST_FUZZED_WAIT = 1  # seconds a fuzzed long poll waits, to keep the suite short
RECEIPT = re.compile(r"[A-Za-z0-9_\-.:@]+:(?P<n>[0-9]+)@(?P<deliveries>[0-9]+)")


LONGEST_RECEIPT = 400


def of_the_queue(queue: str, receipt: object) -> object:
    """A valid receipt made one of ``queue``'s, as short as the document requires."""
    matched = isinstance(receipt, str) and RECEIPT.fullmatch(receipt)
    if not matched:
        return receipt
    room = LONGEST_RECEIPT - len(queue) - len(matched["deliveries"]) - 2
    return f"{queue}:{matched['n'][:room]}@{matched['deliveries']}"


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    """Long polls are fuzzed like any GET, but a valid `wait` is kept short (the request
    timeout stays longer than the longest wait the document allows). A receipt names a
    message of the queue in the path, a rule the document states but JSON Schema cannot
    tie across parameters: valid requests get such receipts."""
    if case.operation.schema is not SCHEMA:
        return
    wait = (case.query or {}).get("wait")
    if isinstance(wait, int) and 0 <= wait <= LONGEST_WAIT:
        case.query["wait"] = min(wait, SHORTEST_FUZZED_WAIT)
    meta, queue = case.meta, (case.path_parameters or {}).get("queue")
    if not isinstance(queue, str):
        return
    if meta is None or not meta.generation.mode.is_positive:
        return
    receipts = (case.query or {}).get("receipt")
    if isinstance(receipts, list):
        case.query["receipt"] = [of_the_queue(queue, r) for r in receipts]
    elif receipts is not None:
        case.query["receipt"] = of_the_queue(queue, receipts)


EXAMPLE_QUEUES = ("test", "genesis")
JSON_BODY = {"Content-Type": "application/json"}


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


def failures_of(events) -> list[str]:
    """What `schemathesis run` would print as failures and errors, one line each."""
    found = []
    for event in events:
        if isinstance(event, engine_events.ScenarioFinished):
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status != Status.SUCCESS and check.failure_info is not None:
                        failure = check.failure_info.failure
                        found.append(f"{failure.operation}: {failure.title}: {failure.message}")
                        found.append(f"    {check.failure_info.code_sample}")
                    elif check.status == Status.ERROR:
                        found.append(f"{event.recorder.label}: check {check.name} crashed")
        elif isinstance(event, engine_events.NonFatalError):
            found.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, engine_events.FatalError):
            found.append(f"fatal: {event.exception!r}")
        elif isinstance(event, engine_events.EngineFinished):
            found.extend(f"after run: {f.title}: {f.message}" for f in event.failures)
    return found


@pytest.mark.timeout(300)
def test_the_broker_answers_as_documented(fuzzed_broker):
    """Every phase (examples, coverage, fuzzing, stateful) and every check, as
    `schemathesis run --checks all` does, on every route but the streams."""
    SCHEMA.config.update(base_url=f"http://127.0.0.1:{fuzzed_broker.port}")
    failures = failures_of(from_schema(SCHEMA).execute())
    assert not failures, "\n".join(failures)
