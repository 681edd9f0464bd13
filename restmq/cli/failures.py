"""Exit statuses of the ``restmq`` command, and the one-line error that ends it."""

from __future__ import annotations

from enum import IntEnum

import click

from restmq.client.errors import BrokerUnavailable, OutcomeUnknown, RestMQError
from restmq.client.transport import NO_ANSWER_IN_TIME


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


def refusal(status: int, text: str, url: str) -> Failure:
    """The exit status an unexpected answer (``status``, the broker's ``text``) means."""
    if status in (401, 403):
        return Failure(f"refused by the broker ({status}): {text}", Exit.REFUSED)
    if 400 <= status < 500:
        return Failure(f"the broker refused the request ({status}): {text}", Exit.USAGE)
    if status >= 500:
        return Failure(
            f"the broker could not serve the request ({status}): {text}", Exit.UNREACHABLE
        )
    return Failure(f"unexpected answer from {url}: {text}", Exit.UNREACHABLE)


def failure_from(error: RestMQError, url: str) -> Failure:
    """What a :mod:`restmq.client` error from the broker at ``url`` means to the command
    (the same words as for the command's own requests)."""
    if error.status is None and isinstance(error, BrokerUnavailable | OutcomeUnknown):
        if error.error == NO_ANSWER_IN_TIME:
            return Failure(f"the broker at {url} did not answer in time", Exit.UNREACHABLE)
        return Failure(f"cannot reach the broker at {url}: {error.error}", Exit.UNREACHABLE)
    if error.status is not None and error.status >= 400:
        return refusal(error.status, error.error, url)
    return Failure(str(error), Exit.UNREACHABLE)  # not a broker's answer (not JSON, not SSE)
