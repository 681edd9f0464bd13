"""What the embedded Valkey saw: command counts and round trips, read past the broker.

Two views, because ``INFO commandstats`` also counts the commands a Lua script runs
(an EVALSHA that does INCRBY, SET, LPUSH and PUBLISH counts 5):

- ``command_calls()``: ``INFO commandstats`` calls per command, read before and
  after a timed run, give every command executed per request;
- ``count_round_trips()``: ``MONITOR`` while a few requests are made one by one;
  MONITOR marks the commands run inside a script ``[0 lua]``, so the others are
  exactly the commands the broker sent, i.e. its round trips to Redis.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Commands whose commandstats name includes the subcommand ("script|load").
_CONTAINERS = {
    "acl", "client", "cluster", "command", "config", "function", "latency",
    "memory", "module", "object", "pubsub", "script", "slowlog", "xinfo",
}  # fmt: skip


class RespConnection:
    """A blocking RESP2 client on a unix socket (commands in, replies out)."""

    def __init__(self, path: Path | str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.stream = self.sock.makefile("rwb")

    def send(self, *args: str | bytes) -> None:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.stream.write(b"".join(parts))
        self.stream.flush()

    def read_reply(self):
        line = self.stream.readline()
        if not line:
            raise ConnectionError("Valkey closed the connection")
        kind, rest = line[:1], line[1:].rstrip(b"\r\n")
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.stream.read(size + 2)[:-2].decode("utf-8", "replace")
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.read_reply() for _ in range(count)]
        raise ValueError(f"not a RESP reply: {line!r}")

    def command(self, *args: str | bytes):
        self.send(*args)
        return self.read_reply()

    def close(self) -> None:
        self.stream.close()
        self.sock.close()

    def __enter__(self) -> RespConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def command_calls(path: Path | str) -> Counter:
    """``INFO commandstats`` as {command: calls}, leaving out our own INFO."""
    with RespConnection(path) as conn:
        text = conn.command("INFO", "commandstats")
    calls: Counter = Counter()
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line[len("cmdstat_") :].partition(":")
            fields = dict(item.split("=", 1) for item in stats.split(","))
            calls[name] = int(fields["calls"])
    del calls["info"]
    return calls


def calls_between(before: Counter, after: Counter) -> Counter:
    delta = Counter(after)
    delta.subtract(before)
    return +delta  # drop zeros


def _command_name(words: list[str]) -> str:
    name = words[0].lower()
    if name in _CONTAINERS and len(words) > 1:
        return f"{name}|{words[1].lower()}"
    return name


def _monitor_words(line: str) -> tuple[str, list[str]]:
    """(source, [command, args...]) of a MONITOR line like ``+1.2 [0 lua] "SET" "k" "v"``."""
    _, _, rest = line.partition("[")
    source, _, args = rest.partition("] ")
    words = []
    for quoted in args.split('" "'):
        words.append(quoted.strip().strip('"'))
        if len(words) == 2:
            break
    return source.split(" ", 1)[-1], words


@dataclass
class RoundTrips:
    """Commands the broker sent (round trips) and those its scripts ran, over some requests."""

    requests: int
    sent: Counter = field(default_factory=Counter)
    in_scripts: Counter = field(default_factory=Counter)
    idle_sent: Counter = field(default_factory=Counter)  # same time span with no requests

    @property
    def per_request(self) -> float:
        background = sum(self.idle_sent.values())
        return max(0, sum(self.sent.values()) - background) / max(1, self.requests)


def _monitored(path: Path | str, action: Callable[[], None]) -> tuple[Counter, Counter]:
    """Commands seen by MONITOR while ``action`` runs: (sent by clients, run inside scripts)."""
    marker = f"restmq-bench-{uuid.uuid4().hex}"
    sent: Counter = Counter()
    in_scripts: Counter = Counter()
    with RespConnection(path, timeout=30) as monitor, RespConnection(path) as control:
        monitor.send("MONITOR")
        monitor.read_reply()
        control.command("ECHO", marker + "-start")
        action()
        control.command("ECHO", marker + "-end")
        inside = False
        while True:
            line = monitor.stream.readline().decode("utf-8", "replace")
            if not line:
                raise ConnectionError("MONITOR stream ended early")
            if marker in line:
                if line.rstrip().endswith(f'"{marker}-end"'):
                    break
                inside = True
                continue
            if not inside:
                continue
            source, words = _monitor_words(line)
            if not words or not words[0]:
                continue
            target = in_scripts if source == "lua" else sent
            target[_command_name(words)] += 1
    return sent, in_scripts


def count_round_trips(
    path: Path | str, requests: int, make_requests: Callable[[], float]
) -> RoundTrips:
    """MONITOR ``make_requests`` (which makes ``requests`` requests and returns the seconds
    it took), then an idle span as long, whose commands (a background sweep, say) are
    subtracted."""
    elapsed: list[float] = []
    sent, in_scripts = _monitored(path, lambda: elapsed.append(make_requests()))
    idle_sent, _ = _monitored(path, lambda: time.sleep(elapsed[0]))
    return RoundTrips(requests, sent, in_scripts, idle_sent)
