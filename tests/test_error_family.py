"""One family of errors, each wire format answering all of it in one place: the HTTP
status and the XML-RPC fault code every error the operations raise gets."""

from __future__ import annotations

import pytest

from restmq import errors
from restmq.access import acl
from restmq.web.handlers.base import as_api_error
from restmq.web.handlers.xmlrpc import as_fault

#: each member, the HTTP status it is answered with, and the XML-RPC fault code (None:
#: no XML-RPC method can raise it)
FAMILY = [
    (errors.InvalidArgument("bad"), 400, 400),
    (errors.InvalidStatus("pause"), 400, 400),
    (errors.EmptyQueue("q"), 404, 404),
    (errors.LeaseGone("q", "q:1@1"), 409, None),
    (errors.DataConflict("WRONGTYPE"), 409, 409),
    (errors.StorageUnavailable("down"), 503, 503),
    (errors.OutcomeUnknown("lost"), 504, 504),
    (errors.TooManyConsumers("full"), 503, None),
    (errors.QueueFull("q", 5), 507, 507),
    (errors.StorageFull(), 507, 507),
    (acl.Refused(403, "access from 10.0.0.1 is not allowed (rest:producer)"), 403, 403),
    (acl.Refused(401, "authentication required (rest:consumer)", acl.CHALLENGE), 401, 401),
    (errors.IdempotencyConflict("q", "8e03978e-40d5"), 422, None),  # XML-RPC sends no key
]


def test_every_error_the_operations_raise_is_of_the_family():
    named = {getattr(errors, name) for name in errors.__all__}
    assert named == {type(error) for error, _, _ in FAMILY} - {acl.Refused} | {errors.RestMQError}
    assert all(isinstance(error, errors.RestMQError) for error, _, _ in FAMILY)


@pytest.mark.parametrize(("error", "status", "fault_code"), FAMILY)
def test_each_wire_format_answers_the_family(error, status, fault_code):
    answer = as_api_error(error)
    assert (answer.status_code, answer.message) == (status, str(error))
    fault = as_fault(error)
    if fault_code is None:
        assert fault is None
    else:
        assert (fault.faultCode, fault.faultString) == (fault_code, str(error))


def test_retry_after_says_when_a_retry_makes_sense():
    assert as_api_error(errors.StorageUnavailable("down")).headers == {"Retry-After": "1"}
    assert as_api_error(errors.TooManyConsumers("full")).headers == {"Retry-After": "5"}
    assert as_api_error(errors.OutcomeUnknown("lost")).headers == {}, "a retry may store twice"


def test_anything_else_is_no_answer_of_the_family():
    for other in (ValueError("x"), LookupError("y"), RuntimeError("z")):
        assert as_api_error(other) is None
