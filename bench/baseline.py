"""The baseline servers: a bare cyclone handler, the framework's own ceiling.

Run as ``python -m bench.baseline --port P [--stock]``. One process, Twisted's
default reactor (the one ``twistd`` picks too), and a handler that does no Redis
call and no validation, just answers with the bytes the broker gives.

- By default the application uses the broker's HTTP connection class
  (``BrokerHTTPConnection``) and output transform (``FixedChunked``), so that the
  only difference from the broker is the work behind the handler.
- With ``--stock`` it is cyclone as shipped: its own Application, HTTPConnection
  and transforms, nothing of ours; what our HTTP layer costs is measured against it.

- ``POST /q/<q>`` answers ``<q>:<n>\\r\\n`` (text/plain), like a produce.
- ``GET /q/<q>`` answers ``{"key": "<q>:<n>", "value": "...", "count": 0}\\r\\n``
  with a value of ``--value-size`` bytes, like a pop.
"""

from __future__ import annotations

import argparse
import itertools
import json

import cyclone.web

from restmq import __version__
from restmq.web.connection.cyclone_fixes import FixedChunked
from restmq.web.connection.http_policy import BrokerHTTPConnection

_SERVER = f"RestMQ/{__version__}"  # the broker's Server header, so answers are the same size


class BareQueueHandler(cyclone.web.RequestHandler):
    """Answers like the broker's ``/q/<q>`` without doing anything behind it."""

    numbers = itertools.count(1)
    value = "v" * 100

    def clear(self) -> None:
        super().clear()
        self.set_header("Server", _SERVER)

    def post(self, queue: str) -> None:
        # cyclone has parsed the form body already, as it does for the broker
        self.request.arguments.get("value")
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(f"{queue}:{next(self.numbers)}\r\n")

    def get(self, queue: str) -> None:
        key = f"{queue}:{next(self.numbers)}"
        body = json.dumps({"key": key, "value": self.value, "count": 0})
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(body + "\r\n")


class BaselineApplication(cyclone.web.Application):
    protocol = BrokerHTTPConnection
    noisy = False

    def __init__(self) -> None:
        super().__init__(
            [(r"/q/(.*)", BareQueueHandler)],
            transforms=[FixedChunked],
            max_body=8 * 1024 * 1024,
            header_timeout=30.0,
        )


class StockApplication(cyclone.web.Application):
    """cyclone's own connection class and default transforms, nothing of ours."""

    noisy = False

    def __init__(self) -> None:
        super().__init__([(r"/q/(.*)", BareQueueHandler)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument(
        "--stock", action="store_true", help="cyclone as shipped: no connection class of ours"
    )
    args = parser.parse_args(argv)
    BareQueueHandler.value = "v" * args.value_size

    from twisted.internet import reactor

    application = StockApplication() if args.stock else BaselineApplication()
    reactor.listenTCP(args.port, application, interface="127.0.0.1")
    kind = "stock cyclone" if args.stock else "baseline"
    print(f"{kind} listening on 127.0.0.1:{args.port} ({type(reactor).__name__})", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
