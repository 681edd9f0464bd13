"""``/health``: can this broker serve? For load balancers, systemd and container probes."""

from __future__ import annotations

import os

from restmq import __version__
from restmq.web.handlers.base import BaseHandler


class HealthHandler(BaseHandler):
    """200 when Redis answers a PING, else 503 saying why. Never guarded by acl.conf:
    a probe has no credentials, and the answer gives nothing away."""

    access: dict[str, str] = {}

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        try:
            await self.operations.ping_storage()
        except Exception as exc:  # whatever stops the ping makes the broker unfit to serve
            self.set_header("Retry-After", "1")
            self.answer(
                {
                    "status": "unavailable",
                    "storage": "down",
                    "error": str(exc) or type(exc).__name__,
                    "version": __version__,
                },
                status=503,
            )
            return
        # pid: which process answered, when several serve the port (--workers)
        self.answer({"status": "ok", "storage": "up", "version": __version__, "pid": os.getpid()})

    async def head(self) -> None:
        await self.get()
