"""HTTP to one broker: a keep-alive connection pool, a timeout on every call, retries, and
every failure turned into a :mod:`restmq.client.errors` exception."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from restmq import __version__
from restmq.client import retry
from restmq.client.errors import BrokerUnavailable, OutcomeUnknown, RestMQError, error_for

log = logging.getLogger("restmq.client")

#: the ``error`` of an OutcomeUnknown raised because the answer did not come in time
NO_ANSWER_IN_TIME = "no answer in time"


def check_url(url: str) -> str:
    """The broker's base URL without a trailing slash; ValueError when it is not one."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"{url!r} is not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{url!r} is not an http:// or https:// URL of a broker")
    return url.rstrip("/")


def path(prefix: str, queue: str) -> str:
    """``/<prefix>/<queue>`` with the name quoted (the broker checks the name itself)."""
    return f"/{prefix}/{quote(queue, safe='')}"


class Transport:
    """Requests to one broker, tried again (``retries`` times at most) when that is safe."""

    def __init__(
        self, url: str, *, user: str | None, password: str | None, timeout: float, retries: int
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a whole number, 0 or more, not {retries!r}")
        self.url = check_url(url)
        self.timeout = timeout
        self.retries = retries
        self._http = httpx.Client(
            base_url=self.url,
            auth=(user, password or "") if user is not None else None,
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": f"restmq-client/{__version__}"},
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        target: str,
        *,
        expect: tuple[int, ...] = (200,),
        replayable: bool = False,
        lease_call: bool = False,
        read_timeout: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One call, its answer when the status is in ``expect``, else an exception.

        ``replayable``: serving the request twice does no harm (a read, an idempotent
        change, a push with its Idempotency-Key), so it is tried again after a 504 or a
        lost answer too. ``read_timeout``: how long the answer may take (a long poll).
        """
        if read_timeout is not None:
            kwargs["timeout"] = httpx.Timeout(self.timeout, read=read_timeout)
        attempt = 0
        while True:
            try:
                response = self._http.request(method, target, **kwargs)
            except httpx.HTTPError as exc:
                failure: httpx.Response | Exception = exc
            else:
                if response.status_code in expect:
                    return response
                failure = response
            if attempt >= self.retries or not retry.may_retry(failure, replayable):
                raise self._final(method, target, failure, lease_call) from None
            pause = retry.pause_before(attempt, failure)
            attempt += 1
            log.warning(
                "%s %s: %s; retry %d of %d in %.1f s",
                method,
                target,
                _what_happened(failure),
                attempt,
                self.retries,
                pause,
            )
            time.sleep(pause)

    @contextlib.contextmanager
    def stream(
        self, target: str, *, idle_timeout: float | None, **kwargs: Any
    ) -> Iterator[httpx.Response]:
        """A streamed GET, its response once the status is 200 (a 503 or a connection that
        could not be made is tried again); reads wait ``idle_timeout`` s at most (None: no
        limit). The response is closed when the block ends."""
        kwargs["timeout"] = httpx.Timeout(self.timeout, read=idle_timeout)
        attempt = 0
        while True:
            failure: httpx.Response | Exception
            try:
                response = self._http.send(
                    self._http.build_request("GET", target, **kwargs), stream=True
                )
            except httpx.HTTPError as exc:
                failure = exc
            else:
                if response.status_code == 200:
                    break
                response.read()
                response.close()
                failure = response
            if attempt >= self.retries or not retry.may_retry(failure, replayable=True):
                raise self._final("GET", target, failure, lease_call=False) from None
            pause = retry.pause_before(attempt, failure)
            attempt += 1
            log.warning(
                "GET %s: %s; retry %d of %d", target, _what_happened(failure), attempt, self.retries
            )
            time.sleep(pause)
        try:
            yield response
        finally:
            response.close()

    def _final(
        self, method: str, target: str, failure: httpx.Response | Exception, lease_call: bool
    ) -> RestMQError:
        if isinstance(failure, httpx.Response):
            return error_for(failure, lease_call=lease_call)
        where = f"{method} {target} at {self.url}"
        reason = str(failure) or type(failure).__name__
        # ``error`` is what the network said, for a caller that words the failure itself
        if isinstance(failure, retry.NOT_SENT):
            tries = f" (tried {self.retries + 1} times)" if self.retries else ""
            return BrokerUnavailable(
                f"{where}: cannot reach the broker{tries}: {reason}", error=reason
            )
        if isinstance(failure, httpx.TimeoutException):
            return OutcomeUnknown(
                f"{where}: no answer in time, it may have been served", error=NO_ANSWER_IN_TIME
            )
        return OutcomeUnknown(
            f"{where}: the answer was lost, it may have been served: {reason}", error=reason
        )


def _what_happened(failure: httpx.Response | Exception) -> str:
    if isinstance(failure, httpx.Response):
        return f"the broker answered {failure.status_code}"
    return str(failure) or type(failure).__name__
