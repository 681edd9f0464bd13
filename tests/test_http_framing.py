"""Request framing: one unambiguous way to tell where a request ends, or a 400.

A request whose length two servers could read differently (Transfer-Encoding with
Content-Length, conflicting Content-Lengths, a space before the colon, folded
header lines) is the raw material of request smuggling. The broker answers each
with 400, a JSON body and ``Connection: close``, never with a silent drop.
Non-1.x versions get 505 on an HTTP/1.1 status line; absolute-form targets are
served as their path.
"""

from __future__ import annotations

import json

import pytest

from tests import support as wire
from tests.support import JSON_TYPE


def post(queue: str, fields: str, body: bytes = b"value=a") -> bytes:
    return (
        f"POST /q/{queue} HTTP/1.1\r\nHost: t\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"{fields}\r\n"
    ).encode() + body


AMBIGUOUS = {
    "te_and_cl": ("Transfer-Encoding: chunked\r\nContent-Length: 7\r\n", "both Transfer-Encoding"),
    "te_odd_case_and_cl": ("tRaNsFeR-eNcOdInG:  chunked \r\nContent-Length: 7\r\n", "both"),
    "te_identity_and_cl": ("Transfer-Encoding: identity\r\nContent-Length: 7\r\n", "both"),
    "cl_then_te": ("Content-Length: 7\r\nTransfer-Encoding: gzip, chunked\r\n", "both"),
    "duplicate_cl": ("Content-Length: 7\r\nContent-Length: 9\r\n", "conflicting Content-Length"),
    "listed_cl": ("Content-Length: 7, 9\r\n", "conflicting Content-Length"),
    "space_before_colon": ("Transfer-Encoding : chunked\r\nContent-Length: 7\r\n", "field name"),
    "space_before_colon_alone": ("Content-Length : 7\r\n", "malformed header field name"),
    "obs_fold": ("Content-Length: 7\r\nX-Note: a\r\n  folded\r\n", "folded header lines"),
    "obs_fold_tab": ("Content-Length: 7\r\nX-Note: a\r\n\tfolded\r\n", "folded header lines"),
}


@pytest.mark.parametrize("case", list(AMBIGUOUS))
def test_ambiguous_framing_gets_400_and_close(shared_broker, queue, case):
    fields, error = AMBIGUOUS[case]
    # A second request rides behind the first: if the broker read the first one
    # differently from us, it would serve this one.
    smuggled = wire.form_request("POST", f"/q/{queue}", b"value=smuggled")
    with wire.connect(shared_broker.port) as sock:
        sock.sendall(post(queue, fields) + smuggled)
        reader = wire.Reader(sock)
        answer = reader.read_response("POST")
        assert answer.status == 400, answer
        assert answer.headers["content-type"] == JSON_TYPE
        assert answer.headers["connection"] == "close"
        assert error in json.loads(answer.body)["error"]
        assert reader.closed()
    assert shared_broker.get(f"/stats/{queue}").json()["len"] == 0


def test_identical_duplicate_content_lengths_are_accepted(shared_broker, queue):
    fields = "Content-Length: 7\r\nContent-Length: 7\r\n"
    [answer] = wire.exchange(shared_broker.port, post(queue, fields), methods=["POST"])
    assert answer.status == 200
    assert answer.body == f"{queue}:1\r\n".encode()
    [answer] = wire.exchange(
        shared_broker.port, post(queue, "Content-Length: 7,7\r\n"), methods=["POST"]
    )
    assert answer.body == f"{queue}:2\r\n".encode()


@pytest.mark.parametrize(
    "request_line",
    [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /stats/ HTTP/2.0\r\n\r\n",
        b"GET /stats/ HTTP/3.0\r\n\r\n",
    ],
)
def test_http2_preface_and_other_versions_get_505(shared_broker, request_line):
    [answer] = wire.exchange(shared_broker.port, request_line)
    assert (answer.version, answer.status) == ("HTTP/1.1", 505)
    assert answer.headers["content-type"] == JSON_TYPE
    assert answer.headers["connection"] == "close"
    assert json.loads(answer.body) == {"error": "only HTTP/1.0 and HTTP/1.1 are supported"}


def test_absolute_form_target_is_served_as_its_path(shared_broker, queue):
    port = shared_broker.port
    request = wire.form_request("POST", f"http://example.com:8080/q/{queue}", b"value=abs")
    [answer] = wire.exchange(port, request, methods=["POST"])
    assert answer.status == 200
    assert answer.body == f"{queue}:1\r\n".encode()
    request = f"GET HTTP://127.0.0.1/stats/{queue}?x=1 HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    [answer] = wire.exchange(port, request)
    assert answer.status == 200
    assert json.loads(answer.body)["queue"] == queue
    [answer] = wire.exchange(port, b"GET http://127.0.0.1 HTTP/1.1\r\nHost: t\r\n\r\n")
    # no path at all is "/", the redirect to the dashboard
    assert (answer.status, answer.headers["location"]) == (302, "/static/index.html")
