"""The supervisor of child processes (the embedded Valkey, the workers): real processes,
started, restarted when they die, stopped with SIGTERM and, if need be, SIGKILL."""

from __future__ import annotations

import os
import sys

import pytest_twisted
from twisted.internet import defer, reactor

from restmq.runtime.supervisor import Exit, Supervisor


class Recorded(Supervisor):
    """A supervised ``python -c SCRIPT`` that keeps what the supervisor tells it."""

    restart_backoff = (0.05, 0.1)

    def __init__(self, script: str, **kwargs) -> None:
        super().__init__(reactor, **kwargs)
        self.script = script
        self.events: list[tuple] = []
        self.lines: list[str] = []
        self._waiting: list[tuple] = []

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script]

    def started(self, pid: int, again: bool) -> None:
        self._note(("started", again))

    def line_received(self, line: str) -> None:
        self.lines.append(line)
        self._note(("line", line))

    def ended(self, pid: int, how: Exit, restart_in: float | None) -> None:
        self._note(("ended", how.describe(), restart_in))

    def killing(self, pid: int) -> None:
        self._note(("killing",))

    def _note(self, event: tuple) -> None:
        self.events.append(event)
        for wanted, waiter in list(self._waiting):
            if event == wanted:
                self._waiting.remove((wanted, waiter))
                waiter.callback(None)

    def when(self, event: tuple) -> defer.Deferred:
        """Fires once ``event`` is noted (at once if it was already)."""
        if event in self.events:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._waiting.append((event, waiter))
        return waiter


# Says hello, then waits for SIGTERM (or ignores it).
SERVE = """
import signal, time
if %(ignore)s:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print('hello from the child', flush=True)
while True:
    time.sleep(1)
"""


@pytest_twisted.ensureDeferred
async def test_a_process_that_dies_is_started_again_with_its_output_relayed():
    child = Recorded("import sys; print('short life', flush=True); sys.exit(3)")
    child.start()
    await child.when(("ended", "exit code 3", 0.1))  # the second death waits longer
    await child.stop()
    assert child.events[:6] == [
        ("started", False),
        ("line", "short life"),
        ("ended", "exit code 3", 0.05),
        ("started", True),
        ("line", "short life"),
        ("ended", "exit code 3", 0.1),
    ]
    assert not child.running and child.pid is None


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_the_process_to_exit_after_sigterm():
    child = Recorded(SERVE % {"ignore": False})
    child.start()
    await child.when(("line", "hello from the child"))
    pid = child.pid
    await child.stop()
    assert child.events[-1] == ("ended", "signal 15", None), "stopped, not restarted"
    assert ("killing",) not in child.events
    assert not _alive(pid)


@pytest_twisted.ensureDeferred
async def test_a_process_that_ignores_sigterm_is_killed_after_the_stop_timeout():
    child = Recorded(SERVE % {"ignore": True})
    child.stop_timeout = 0.3
    child.start()
    await child.when(("line", "hello from the child"))
    pid = child.pid
    await child.stop()
    assert child.events[-2:] == [("killing",), ("ended", "signal 9", None)]
    assert not _alive(pid)


@pytest_twisted.ensureDeferred
async def test_the_process_inherits_the_descriptors_it_is_given():
    read_end, write_end = os.pipe()
    try:
        child = Recorded(
            f"import os; os.write({write_end}, b'through the inherited pipe')",
            inherited_fds=(write_end,),
        )
        child.start()
        await child.when(("ended", "exit code 0", 0.05))
        await child.stop()
        assert os.read(read_end, 100) == b"through the inherited pipe"
    finally:
        os.close(read_end)
        os.close(write_end)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
