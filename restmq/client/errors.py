"""What can go wrong talking to a broker, as exceptions that say what the broker answered.

They are the client's own: the client loads no broker module, so they do not derive from
the broker's errors. Each carries the HTTP ``status`` (None when no answer came) and the
broker's ``{"error": ...}`` text (or what the network said) as ``error``.
"""

from __future__ import annotations

import httpx


class RestMQError(Exception):
    """Every error of :mod:`restmq.client`."""

    def __init__(self, message: str, *, status: int | None = None, error: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error = error or message


class BrokerUnavailable(RestMQError):
    """Nothing was done: the broker answered 503, or could not be reached, on every try."""


class OutcomeUnknown(RestMQError):
    """The request may or may not have taken effect: a 504, or an answer lost on the way."""


class BadRequest(RestMQError):
    """The broker refused the request as invalid (a 4xx other than 401 and 403)."""


class IdempotencyConflict(BadRequest):
    """422: the push's Idempotency-Key was used before for another message."""


class AccessDenied(RestMQError):
    """acl.conf refused the request: 401 (credentials missing or wrong) or 403 (address)."""


class LeaseGone(RestMQError):
    """409 on an ack, extension or release: the lease ran out, was settled, or belongs to an
    earlier delivery of the message. Nothing changed; another consumer may have it now."""


class NotLeased(RestMQError):
    """ack, release or extend on a message that was not taken under a lease."""


def error_text(response: httpx.Response) -> str:
    """What the broker said went wrong: its ``{"error": ...}``, else the status line."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return f"{response.status_code} {response.reason_phrase}".strip()


def error_for(response: httpx.Response, *, lease_call: bool = False) -> RestMQError:
    """The exception an unexpected answer means. ``lease_call``: a 409 is a gone lease."""
    status = response.status_code
    text = error_text(response)
    where = f"{response.request.method} {response.request.url.path}"
    message = f"{where}: the broker answered {status}: {text}"
    if status == 409 and lease_call:
        return LeaseGone(message, status=status, error=text)
    if status in (401, 403):
        return AccessDenied(message, status=status, error=text)
    if status == 422:
        return IdempotencyConflict(message, status=status, error=text)
    if status == 503:
        return BrokerUnavailable(message, status=status, error=text)
    if status == 504:
        return OutcomeUnknown(message, status=status, error=text)
    if 400 <= status < 500:
        return BadRequest(message, status=status, error=text)
    return RestMQError(message, status=status, error=text)
