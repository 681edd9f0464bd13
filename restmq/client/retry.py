"""When to try a request again, and how long to wait first.

A 503 and a connection that could not be made mean nothing was done: retrying is always
safe. A 504, a timeout or an answer lost on the way mean the request may have taken effect:
only a request that is safe to replay (a read, an idempotent change, a push carrying its
Idempotency-Key) is tried again then.
"""

from __future__ import annotations

import random

import httpx

FIRST_PAUSE = 0.2  # seconds before the first retry; doubled for each one after it
LONGEST_PAUSE = 5.0  # a backoff never waits longer than this
LONGEST_RETRY_AFTER = 30.0  # nor does a broker's Retry-After keep us longer than this

#: failures in which the request never reached the broker
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: failures after which the request may have been served, its answer lost
ANSWER_LOST = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def may_retry(failure: httpx.Response | Exception, replayable: bool) -> bool:
    """True when the request may be tried again after this answer or exception."""
    if isinstance(failure, httpx.Response):
        return failure.status_code == 503 or (failure.status_code == 504 and replayable)
    if isinstance(failure, NOT_SENT):
        return True
    return replayable and isinstance(failure, ANSWER_LOST)


def pause_before(retry: int, failure: httpx.Response | Exception) -> float:
    """Seconds to wait before retry number ``retry`` (0 for the first): the broker's
    Retry-After when it sent one, else an exponential backoff with jitter (so that many
    clients turned away together do not come back together)."""
    if isinstance(failure, httpx.Response):
        after = retry_after(failure)
        if after is not None:
            return after
    backoff = min(LONGEST_PAUSE, FIRST_PAUSE * 2**retry)
    return backoff * random.uniform(0.5, 1.0)


def retry_after(response: httpx.Response) -> float | None:
    """A Retry-After in seconds (the broker sends whole seconds), capped; None without one."""
    value = response.headers.get("Retry-After", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None  # absent, or an HTTP date: the broker sends neither as a pause
    return min(max(seconds, 0.0), LONGEST_RETRY_AFTER)
