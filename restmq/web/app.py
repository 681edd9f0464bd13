"""The cyclone Application: routes, settings and the connection class."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import cyclone.web
from twisted.logger import Logger

from restmq.options import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS
from restmq.web import admin, health, jsonproto, openapi, pages, rest, streaming, websocket, xmlrpc
from restmq.web.base import NotFoundHandler
from restmq.web.cyclone_fixes import FixedChunked
from restmq.web.draining import CloseWhenStopping, DrainingHTTPConnection, OpenConnections

log = Logger(namespace="restmq.http")

PACKAGE = resources.files("restmq")


def route(pattern: str, handler: type, **kwargs: Any) -> cyclone.web.URLSpec:
    """A URLSpec whose handler can re-read its path arguments (see BaseHandler._execute)."""
    regex = re.compile(pattern + "$")
    return cyclone.web.URLSpec(pattern, handler, dict(kwargs, route=regex))


def routes() -> list:
    return [
        route(r"/", rest.IndexHandler),
        route(r"/q/(.*)", rest.QueueHandler),
        route(r"/queue", jsonproto.JsonProtocolHandler),
        route(r"/queue/(.*)", jsonproto.JsonProtocolHandler),
        route(r"/p/(.*)", admin.PolicyHandler),
        route(r"/control/(.*)", admin.ControlHandler),
        route(r"/stats/(.*)", admin.StatsHandler),
        route(r"/health", health.HealthHandler),
        route(r"/j/(.*)", pages.JobsHandler),
        route(r"/c/(.*)", streaming.StreamHandler),
        route(r"/ws/(.*)", websocket.WebSocketHandler),
        route(r"/xmlrpc", xmlrpc.XmlRpcHandler),
        route(r"/RPC2", xmlrpc.XmlRpcHandler),
        route(r"/openapi\.json", openapi.OpenApiHandler),
        (r"/static/(.*)", pages.StaticHandler, {"path": str(PACKAGE.joinpath("static"))}),
    ]


class BrokerApplication(cyclone.web.Application):
    """The Application, holding the broker (engine, consumers) its handlers use."""

    protocol = DrainingHTTPConnection
    noisy = False  # no "Starting factory" lines in the log

    def __init__(
        self,
        broker,
        *,
        max_body: int,
        header_timeout: float = 30.0,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
        debug: bool = False,
    ) -> None:
        self.broker = broker
        self.connections = OpenConnections()  # what a stop winds down and waits for
        super().__init__(
            routes(),
            transforms=[FixedChunked, CloseWhenStopping],
            template_path=str(PACKAGE.joinpath("templates")),
            error_handler=NotFoundHandler,
            max_body=max_body,
            header_timeout=header_timeout,
            max_header_bytes=max_header_bytes,
            max_headers=max_headers,
            log_function=self._log_request,
            debug=debug,
        )

    @staticmethod
    def _log_request(handler) -> None:
        status = handler.get_status()
        if status < 400:
            return  # a broker at full speed would drown its log in 200s
        emit = log.warn if status >= 500 else log.info
        emit(
            "{status} {method} {uri} from {client}",
            status=status,
            method=handler.request.method,
            uri=handler.request.uri[:200],
            client=handler.request.remote_ip,
        )
