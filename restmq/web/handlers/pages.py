"""HTML pages: the queue list (``/q/``), job info (``/j/<q>``) and static files."""

from __future__ import annotations

import cyclone.web

from restmq.access import acl
from restmq.web.connection import cyclone_fixes
from restmq.web.handlers.base import (
    SERVER,
    BaseHandler,
    BrokerRequestMixin,
    method_not_allowed,
    write_json_error,
)


async def queue_list_page(handler: BaseHandler) -> None:
    """``/q/``: every queue as a link to its REST route."""
    queues = await handler.operations.queues()
    handler.render("queues.html", queues=queues)


class JobsHandler(BaseHandler):
    """``/j/<queue>``: name, message counter, pending count and the 10 newest pending keys."""

    access = {"GET": acl.CONSUMER}  # the original left /j/ open

    async def get(self, queue: str) -> None:
        info = await self.operations.info(queue, newest=10)
        self.render("jobs.html", queue=info.stats.name, info=info)


class StaticHandler(BrokerRequestMixin, cyclone.web.StaticFileHandler):
    """cyclone's static files, checked and answered like every other route.

    The dashboard pages are consumer routes (acl.conf ``[rest:consumer]``), whatever
    the method; errors are JSON, and a malformed If-Modified-Since is ignored.
    """

    access = dict.fromkeys(cyclone.web.StaticFileHandler.SUPPORTED_METHODS, acl.CONSUMER)

    def prepare(self):
        cyclone_fixes.drop_bad_if_modified_since(self.request)
        return super().prepare()

    def get_cache_time(self, path, modified, mime_type):
        return 0  # cyclone's Expires header for ?v= URLs is not an HTTP date

    def clear(self) -> None:
        super().clear()
        self.set_header("Server", SERVER)

    def write_error(self, status_code: int, **kwargs) -> None:
        # cyclone's default is an HTML page; every other route answers JSON
        if status_code == 404:
            message = f"no such file: {self.request.path}"
        elif status_code == 405:
            message = method_not_allowed(self)
        else:
            message = f"{cyclone_fixes.reason_of(self)}: {self.request.path}"
        write_json_error(self, cyclone_fixes.exception_of(kwargs), message)
