"""``bodies``: broker RSS under a burst of large concurrent POSTs, and after it.

Many clients post bodies near ``--max-body`` at once. The broker admits what fits
in its memory budget (``--max-buffered``, its default here), answers the rest 503
"broker busy" before reading their bodies, and gives the memory back afterwards.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
import uuid

from bench.report import Check, ScenarioResult, Table, mib
from bench.scenario import Context, Scenario
from bench.servers import BrokerServer, rss_bytes
from restmq.defaults import DEFAULT_MAX_BUFFERED

MiB = 1024 * 1024
BODY_SIZE = 8 * MiB - 1024  # just under the default --max-body
SETTLE_SECONDS = (1.0, 3.0, 10.0)  # RSS samples after the burst
#: the broker's RSS may peak at most this many times --max-buffered above its start
PEAK_TARGET = 1.5


class RssWatcher:
    """Samples a process's RSS in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid, self.interval = pid, interval
        self.peak = rss_bytes(pid) or 0
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self._running:
            self.peak = max(self.peak, rss_bytes(self.pid) or 0)
            time.sleep(self.interval)

    def __enter__(self) -> RssWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._running = False
        self._thread.join()


def post(port: int, path: str, body: bytes) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace")
        return response.status, text
    except OSError as exc:
        return 0, str(exc)
    finally:
        conn.close()


def outcome(status: int, text: str) -> str:
    if status == 503:
        try:
            error = json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):
            error = text
        return "503 broker busy" if error.startswith("broker busy") else "503 other"
    return str(status) if status else "connection error"


class BodiesScenario(Scenario):
    name = "bodies"
    title = "bodies: broker RSS under concurrent large POSTs, and after"

    def planned_checks(self, options: argparse.Namespace) -> list[Check]:
        return [
            Check(
                "bodies",
                f"RSS peak growth <= {PEAK_TARGET:g} x --max-buffered "
                f"({options.big_posts} concurrent POSTs)",
            )
        ]

    def run(self, ctx: Context, result: ScenarioResult) -> None:
        clients = ctx.options.big_posts
        broker = BrokerServer(ctx.workdir("broker")).start()
        queue = f"bodies-{uuid.uuid4().hex[:6]}"
        body = json.dumps({"value": "x" * (BODY_SIZE - 14)}).encode()
        ctx.out(
            f"  {clients} clients POST {mib(len(body))} each at once to one broker "
            "(default --max-buffered and --max-body)"
        )
        post(broker.port, f"/q/{queue}", b'{"value": "warm-up"}')
        time.sleep(1.0)
        start = rss_bytes(broker.pid)
        answers: list[tuple[int, str]] = []
        threads = [
            threading.Thread(target=lambda: answers.append(post(broker.port, f"/q/{queue}", body)))
            for _ in range(clients)
        ]
        began = time.monotonic()
        with RssWatcher(broker.pid) as watcher:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        # VmHWM is the true peak (the watcher samples, and may miss it)
        peak = max(watcher.peak, rss_bytes(broker.pid, "VmHWM") or 0)
        took = time.monotonic() - began
        after = {}
        waited = 0.0
        for mark in SETTLE_SECONDS:
            time.sleep(mark - waited)
            waited = mark
            after[mark] = rss_bytes(broker.pid)
        stats = json.loads(_get(broker.port, f"/stats/{queue}"))
        broker.stop()

        table = Table(["broker (twistd) RSS", "value", "vs start"])
        table.add("before the burst", mib(start), "-")
        table.add("peak during it (VmHWM)", mib(peak), _delta(peak - start))
        for mark, value in after.items():
            table.add(f"{mark:g} s after it", mib(value), _delta(value - start))
        ctx.out()
        ctx.out(table.render())
        counts: dict[str, int] = {}
        for status, text in answers:
            key = outcome(status, text)
            counts[key] = counts.get(key, 0) + 1
        summary = ", ".join(f"{n} x {key}" for key, n in sorted(counts.items()))
        ctx.out(f"  answers in {took:.1f} s: {summary}; messages stored: {stats['len'] - 1}")
        ratio = (peak - start) / DEFAULT_MAX_BUFFERED
        ctx.out(
            f"  peak growth {_delta(peak - start)} = {ratio:.2f} x --max-buffered "
            f"({mib(DEFAULT_MAX_BUFFERED)}); target <= {PEAK_TARGET:g} x"
        )
        result.checks[0].judge(ratio <= PEAK_TARGET, f"{ratio:.2f} x")


def _delta(nbytes: int) -> str:
    return ("+" if nbytes >= 0 else "-") + mib(abs(nbytes))


def _get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()
