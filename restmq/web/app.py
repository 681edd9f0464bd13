"""The cyclone Application: routes, settings and the connection class."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import cyclone.web
from twisted.logger import Logger

from restmq.defaults import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS
from restmq.web.connection import cyclone_fixes
from restmq.web.connection.cyclone_fixes import FixedChunked
from restmq.web.connection.draining import (
    CloseWhenStopping,
    DrainingHTTPConnection,
    OpenConnections,
)
from restmq.web.handlers import (
    admin,
    health,
    jsonproto,
    openapi,
    pages,
    prometheus,
    rest,
    streaming,
    subscriptions,
    websocket,
    xmlrpc,
)
from restmq.web.handlers.base import NotFoundHandler

log = Logger(namespace="restmq.http")

PACKAGE = resources.files("restmq")


def route(pattern: str, handler: type, **kwargs: Any) -> cyclone.web.URLSpec:
    """A URLSpec whose handler can re-read its path arguments (see
    cyclone_fixes.PlusInPathMixin)."""
    regex = re.compile(pattern + "$")
    return cyclone.web.URLSpec(pattern, handler, dict(kwargs, route=regex))


def routes() -> list:
    return [
        route(r"/", rest.IndexHandler),
        # before /q/(.*), which would take them for a queue (whose name holds no /)
        route(subscriptions.SUBSCRIPTIONS, subscriptions.SubscriptionsHandler),
        route(subscriptions.SUBSCRIPTION, subscriptions.SubscriptionHandler),
        route(r"/q/(.*)", rest.QueueHandler),
        route(r"/queue", jsonproto.JsonProtocolHandler),
        route(r"/queue/(.*)", jsonproto.JsonProtocolHandler),
        route(r"/p/(.*)", admin.PolicyHandler),
        route(r"/control/(.*)", admin.ControlHandler),
        route(r"/stats/(.*)", admin.StatsHandler),
        route(r"/health", health.HealthHandler),
        route(r"/metrics", prometheus.MetricsHandler),
        route(r"/j/(.*)", pages.JobsHandler),
        route(r"/c/(.*)", streaming.StreamHandler),
        route(r"/ws/(.*)", websocket.WebSocketHandler),
        route(r"/xmlrpc", xmlrpc.XmlRpcHandler),
        route(r"/RPC2", xmlrpc.XmlRpcHandler),
        route(r"/openapi\.json", openapi.OpenApiHandler),
        (r"/static/(.*)", pages.StaticHandler, {"path": str(PACKAGE.joinpath("static"))}),
    ]


#: the methods restmq_http_requests_total names; any other is counted as "other"
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
UNMATCHED = "unmatched"  # the route label of a path no route matches


_NAMED_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")


def route_label(pattern: str) -> str:
    """The route as metrics name it: ``/q/(.*)`` is ``/q/{queue}``, a named group
    ``(?P<name>...)`` is ``{name}``; never a raw path."""
    placeholder = "{path}" if pattern.startswith("/static/") else "{queue}"
    named = _NAMED_GROUP.sub(r"{\1}", pattern)
    return named.replace("(.*)", placeholder).replace("\\", "")


def route_labels(specs: list) -> dict[object, str]:
    """Each route's label, keyed as ``label_of`` looks it up: by the ``route`` regex
    our handlers keep (see ``route``), else by the handler class."""
    labels: dict[object, str] = {}
    for spec in specs:
        if isinstance(spec, cyclone.web.URLSpec):
            pattern = spec.regex.pattern.removesuffix("$")
            handler, kwargs = spec.handler_class, spec.kwargs
        else:
            pattern, handler, kwargs = spec
        labels[kwargs.get("route") or handler] = route_label(pattern)
    return labels


class BrokerApplication(cyclone.web.Application):
    """The Application, holding the broker (operations, acl) its handlers use."""

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
        specs = routes()
        self._route_labels = route_labels(specs)
        super().__init__(
            specs,
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
        cyclone_fixes.without_ui_modules(self)

    def label_of(self, handler) -> str:
        """The route label of the request ``handler`` answered."""
        labels = self._route_labels
        return labels.get(getattr(handler, "route", None)) or labels.get(type(handler), UNMATCHED)

    def _log_request(self, handler) -> None:
        status = handler.get_status()
        method = handler.request.method
        self.broker.operations.metrics.http_request(
            self.label_of(handler), method if method in KNOWN_METHODS else "other", status
        )
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
