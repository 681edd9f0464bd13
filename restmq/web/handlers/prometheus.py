"""``GET /metrics``: the broker's metrics in the Prometheus text format (restmq.metrics)."""

from __future__ import annotations

from restmq import metrics
from restmq.access import acl
from restmq.web.handlers.base import BaseHandler


class MetricsHandler(BaseHandler):
    """Counters of this broker process, and gauges read now: one Redis call per scrape."""

    access = {"GET": acl.CONSUMER}  # guarded like /stats/

    async def get(self) -> None:
        operations = self.operations
        snapshot = await operations.metrics_snapshot()
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.finish(operations.metrics.render(snapshot))
