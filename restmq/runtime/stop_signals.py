"""One stop, however many times it is asked for.

The reactor stops on SIGINT and SIGTERM by calling ``reactor.stop()`` a moment
later. A second signal while the broker stops (Ctrl-C pressed twice, or ``make
run`` passing a Ctrl-C on to twistd, which got it from the terminal as well)
would call it again, and Twisted logs that as a critical ``ReactorNotRunning``
traceback. ``StopOnce`` lets the first request through and notes the others.
"""

from __future__ import annotations

import signal

from twisted.logger import Logger

log = Logger(namespace="restmq")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnce:
    """Stops the reactor at most once: on a signal, on ``stop()``, or by anyone else."""

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self.stopping = False
        # However the stop was asked for (twistd, a test, a failed start), it has begun.
        reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)

    def take_signals(self) -> None:
        """Wrap the reactor's SIGINT and SIGTERM handlers; call once the reactor runs
        (it installs them as it starts). Handlers the reactor did not install are left be."""
        for number in _STOP_SIGNALS:
            handler = signal.getsignal(number)
            if getattr(handler, "__self__", None) is self.reactor:
                signal.signal(number, self._once(handler))

    def stop(self) -> None:
        """Stop the reactor, unless it is stopping already."""
        if not self.stopping:
            self.stopping = True
            self.reactor.stop()

    def _shutting_down(self) -> None:
        self.stopping = True

    def _once(self, reactor_handler):
        def on_signal(number: int, frame) -> None:
            if self.stopping:
                log.info(
                    "Received {name} again; the broker is stopping already",
                    name=signal.Signals(number).name,
                )
                return
            self.stopping = True
            reactor_handler(number, frame)  # logs "Received SIGTERM, shutting down."

        return on_signal
