"""Exit statuses of the ``restmq`` command, and the one-line error that ends it."""

from __future__ import annotations

from enum import IntEnum

import click


class Exit(IntEnum):
    """What the command's exit status means (also listed in ``restmq --help``)."""

    DONE = 0
    NOTHING = 1  # the queue was empty, nothing arrived, or a lease was already gone
    USAGE = 2  # bad arguments, or the broker refused the request as invalid (4xx)
    UNREACHABLE = 3  # no connection, a timeout, or the broker answered 5xx
    REFUSED = 4  # acl.conf refused us (401 or 403)


class Failure(click.ClickException):
    """Ends the command with ``Error: <message>`` on stderr (one line) and ``status``."""

    def __init__(self, message: str, status: Exit) -> None:
        # One line, whatever the broker or the network library said.
        super().__init__(" ".join(message.split()))
        self.exit_code = int(status)
