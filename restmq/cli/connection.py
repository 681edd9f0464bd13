"""HTTP to the broker for what the Python client (restmq.client) does not express: acks of
several receipts in one request, and the lease calls of ``restmq copy``. Every way a call
can fail is mapped to an exit status."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from restmq import __version__
from restmq.cli.failures import Exit, Failure, refusal
from restmq.client.errors import error_text


def failure_of(response: httpx.Response) -> Failure:
    """The exit status an unexpected answer means, with the broker's own words."""
    return refusal(response.status_code, error_text(response), str(response.url))


def json_of(response: httpx.Response) -> Any:
    """The answer's JSON; an answer that is not JSON did not come from a RestMQ broker."""
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        raise Failure(
            f"the answer from {response.url} is not JSON: is --url a RestMQ broker?",
            Exit.UNREACHABLE,
        ) from None


class BrokerConnection:
    """Calls to one broker; every failure becomes a :class:`Failure` with its exit status."""

    def __init__(self, url: str, *, user: str | None, password: str | None, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._client = httpx.Client(
            base_url=url,
            auth=(user, password or "") if user is not None else None,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={"User-Agent": f"restmq-cli/{__version__}"},
        )

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def path(prefix: str, queue: str) -> str:
        """``/<prefix>/<queue>`` with the queue name quoted (the broker checks the name)."""
        return f"/{prefix}/{quote(queue, safe='')}"

    def call(
        self,
        method: str,
        path: str,
        *,
        expect: tuple[int, ...] = (200,),
        read_timeout: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request; its answer when the status is in ``expect``, else a Failure."""
        if read_timeout is not None:
            kwargs["timeout"] = httpx.Timeout(read_timeout, connect=min(self.timeout, 10.0))
        with self._unreachable_as_failure():
            response = self._client.request(method, path, **kwargs)
        if response.status_code not in expect:
            raise failure_of(response)
        return response

    def post_json(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        content = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        return self.call("POST", path, content=content, headers=headers, **kwargs)

    @contextlib.contextmanager
    def _unreachable_as_failure(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException:
            raise Failure(
                f"the broker at {self.url} did not answer in time", Exit.UNREACHABLE
            ) from None
        except httpx.RequestError as exc:  # connection refused or lost, bad TLS, ...
            reason = str(exc) or type(exc).__name__
            raise Failure(
                f"cannot reach the broker at {self.url}: {reason}", Exit.UNREACHABLE
            ) from None
