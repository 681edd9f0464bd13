"""Producers for the streaming scenarios: each message value carries its publish time.

- ``paced_publish``: one ``POST /q/<q>`` per message at a fixed rate (open loop: a
  message is sent when its time comes, whatever the answers before it took).
- ``flood_publish``: batches (``{"values": [...]}``) as fast as the consumers take
  them, never more than ``window`` messages ahead of the slowest consumer.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.consumers import stamped_value
from bench.httpclient import HttpConnection, HttpError, encode_request, form_body

FORM = "application/x-www-form-urlencoded"


@dataclass
class PublishStats:
    sent: int = 0  # messages the broker accepted
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    max_lag_s: float = 0.0  # how far behind its schedule a paced publisher fell
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def paced_publish(
    port: int,
    queue: str,
    rate: float,
    duration: float,
    value_size: int,
    connections: int = 8,
) -> PublishStats:
    """``rate`` messages per second for ``duration`` seconds, each one POST."""
    stats = PublishStats()
    total = int(rate * duration)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    next_index = 0
    path = f"/q/{queue}"

    async def sender() -> None:
        nonlocal next_index
        conn = await HttpConnection(port).open()
        try:
            while next_index < total:
                index = next_index
                next_index += 1
                delay = t0 + index / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    stats.max_lag_s = max(stats.max_lag_s, -delay)
                body = form_body(value=stamped_value(index, value_size))
                raw = encode_request("POST", path, port=port, body=body, content_type=FORM)
                try:
                    response = await conn.request(raw, "POST")
                except (OSError, asyncio.IncompleteReadError, HttpError) as exc:
                    stats.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                stats.statuses[response.status] += 1
                if response.status == 200:
                    stats.sent += 1
        finally:
            conn.close()

    await asyncio.gather(*(sender() for _ in range(connections)))
    stats.elapsed_s = loop.time() - t0
    return stats


async def flood_publish(
    port: int,
    queue: str,
    until: float,
    value_size: int,
    slowest_received: Callable[[], int],
    window: int = 2000,
    batch: int = 50,
    stats_sink: list | None = None,
) -> PublishStats:
    """Publish batches until ``until`` (loop time), ``window`` messages ahead at most.

    ``stats_sink`` (a list) receives the live stats at once, for reading mid-run."""
    stats = PublishStats()
    if stats_sink is not None:
        stats_sink.append(stats)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    path = f"/q/{queue}"
    conn = await HttpConnection(port).open()
    sequence = 0
    batches = True
    try:
        while loop.time() < until:
            if stats.sent - slowest_received() + batch > window:
                await asyncio.sleep(0.001)
                continue
            values = [stamped_value(sequence + i, value_size) for i in range(batch)]
            if batches:
                body = json.dumps({"values": values}).encode()
                raw = encode_request(
                    "POST", path, port=port, body=body, content_type="application/json"
                )
            else:
                values = values[:1]
                raw = encode_request(
                    "POST", path, port=port, body=form_body(value=values[0]), content_type=FORM
                )
            try:
                response = await conn.request(raw, "POST")
            except (OSError, asyncio.IncompleteReadError, HttpError) as exc:
                stats.errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)
                continue
            stats.statuses[response.status] += 1
            if response.status == 200:
                stats.sent += len(values)
                sequence += len(values)
            elif batches and response.status == 400:
                batches = False  # no batch adds on this broker: one message per POST
            else:
                stats.errors.append(f"HTTP {response.status}: {response.body[:200]!r}")
                await asyncio.sleep(0.01)
    finally:
        conn.close()
    stats.elapsed_s = loop.time() - t0
    return stats
