"""What a handler reads of a request head: parsed once by the broker's connection and
handed to cyclone as cyclone would have read it (in-process app, real sockets)."""

from __future__ import annotations

import json

import cyclone.web
import pytest_twisted
from twisted.internet import reactor, threads

from restmq.web.connection.cyclone_fixes import FixedChunked
from restmq.web.connection.http_policy import BrokerHTTPConnection
from restmq.web.handlers.base import BaseHandler
from tests import support as wire


class EchoHandler(BaseHandler):
    """Answers with what cyclone's request says about itself."""

    def echo(self) -> None:
        request = self.request
        self.answer(
            {
                "method": request.method,
                "uri": request.uri,
                "path": request.path,
                "query": request.query,
                "version": request.version,
                "remote_ip": request.remote_ip,
                "headers": sorted(request.headers.get_all()),
                "x_many": request.headers.get("x-many"),
                "arguments": {k: [self.arg(k)] for k in request.arguments},
                "body": request.body.decode(),
            }
        )

    get = post = echo


class EchoApp(cyclone.web.Application):
    protocol = BrokerHTTPConnection
    noisy = False

    def __init__(self) -> None:
        super().__init__([(r"/echo", EchoHandler)], transforms=[FixedChunked], max_body=1024)


def ask(port: int, raw: bytes) -> list[wire.RawResponse]:
    sock = wire.connect(port)
    try:
        sock.sendall(raw)
        reader = wire.Reader(sock)
        answers = [reader.read_response()]
        if answers[0].status == 100:
            answers.append(reader.read_response())
        return answers
    finally:
        sock.close()


async def exchange(raw: bytes) -> list[wire.RawResponse]:
    listening = reactor.listenTCP(0, EchoApp(), interface="127.0.0.1")
    try:
        return await threads.deferToThread(ask, listening.getHost().port, raw)
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_handler_reads_the_head_as_sent():
    [answer] = await exchange(
        b"GET http://example.com/echo?a=1&b=%C3%A9 HTTP/1.1\r\n"
        b"Host: example.com\r\nx-many: one\r\nX-Many:  two \r\nuser-agent: t\xc3\xa9st\r\n\r\n"
    )
    assert answer.status == 200
    seen = json.loads(answer.body)
    assert seen["method"] == "GET" and seen["version"] == "HTTP/1.1"
    assert (seen["uri"], seen["path"], seen["query"]) == (
        "/echo?a=1&b=%C3%A9",
        "/echo",
        "a=1&b=%C3%A9",
    )
    assert seen["arguments"] == {"a": ["1"], "b": ["é"]}
    assert seen["remote_ip"] == "127.0.0.1"
    # names in Http-Case, repeats kept apart and joined with a comma, values trimmed
    assert seen["headers"] == [
        ["Host", "example.com"], ["User-Agent", "tést"], ["X-Many", "one"], ["X-Many", "two"],
    ]  # fmt: skip
    assert seen["x_many"] == "one,two"


@pytest_twisted.ensureDeferred
async def test_a_form_body_announced_twice_with_the_same_length_is_read_once():
    body = b"value=hello&n=2"
    [answer] = await exchange(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n%s" % (len(body), len(body), body)
    )
    seen = json.loads(answer.body)
    assert seen["body"] == "value=hello&n=2"
    assert seen["arguments"] == {"value": ["hello"], "n": ["2"]}
    assert ["Content-Length", str(len(body))] in seen["headers"]
    assert sum(name == "Content-Length" for name, _ in seen["headers"]) == 1


@pytest_twisted.ensureDeferred
async def test_a_client_that_expects_100_continue_gets_it_before_the_answer():
    listening = reactor.listenTCP(0, EchoApp(), interface="127.0.0.1")
    try:
        port = listening.getHost().port

        def talk() -> list[int]:
            sock = wire.connect(port)
            try:
                sock.sendall(
                    b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 5\r\n\r\n"
                )
                reader = wire.Reader(sock)
                interim = reader.read_head()[1]
                sock.sendall(b"a=b&c")
                final = reader.read_response()
                return [interim, final.status, json.loads(final.body)["arguments"]]
            finally:
                sock.close()

        interim, status, arguments = await threads.deferToThread(talk)
        assert (interim, status) == (100, 200)
        assert arguments["a"] == ["b"]
    finally:
        await listening.stopListening()
