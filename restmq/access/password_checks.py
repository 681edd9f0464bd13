"""Password checks against acl.conf's plain or scrypt passwords, off the reactor thread."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger

from restmq.access import passwd

log = Logger(namespace="restmq.acl")


class PasswordChecker:
    """Checks passwords against plain or scrypt ones; remembers recent scrypt verdicts.

    A scrypt check costs tens of milliseconds of CPU, too much for every request of
    a busy client and far too much for the reactor thread: ``check_later`` runs it in
    a worker thread, at most ``concurrency`` at a time, so a flood of wrong passwords
    waits its turn instead of stalling every connection or taking every thread.
    A verdict is remembered under an HMAC of the candidate with a per-process
    secret, so the plain candidate is never kept; a remembered verdict and a plain
    password are decided at once.
    """

    def __init__(self, size: int = 512, concurrency: int = 2) -> None:
        self._secret = os.urandom(32)
        self._verdicts: OrderedDict[tuple[str, bytes], bool] = OrderedDict()
        self._size = size
        self._slots = defer.DeferredSemaphore(concurrency)

    def _key(self, expected: passwd.ScryptHash, given: bytes) -> tuple[str, bytes]:
        return (str(expected), hmac.new(self._secret, given, hashlib.sha256).digest())

    def _remember(self, key: tuple[str, bytes], verdict: bool) -> None:
        self._verdicts[key] = verdict
        if len(self._verdicts) > self._size:
            self._verdicts.popitem(last=False)

    def known(self, expected: str | passwd.ScryptHash, candidate: str) -> bool | None:
        """The verdict if it needs no scrypt work (plain or remembered); None otherwise."""
        given = candidate.encode("utf-8")
        if isinstance(expected, str):
            return hmac.compare_digest(given, expected.encode("utf-8"))
        key = self._key(expected, given)
        verdict = self._verdicts.get(key)
        if verdict is not None:
            self._verdicts.move_to_end(key)
        return verdict

    def check_later(self, expected: str | passwd.ScryptHash, candidate: str) -> defer.Deferred:
        """A Deferred verdict; fired already when it needs no scrypt work."""
        verdict = self.known(expected, candidate)
        if verdict is not None:
            return defer.succeed(verdict)
        assert isinstance(expected, passwd.ScryptHash)
        given = candidate.encode("utf-8")
        key = self._key(expected, given)

        def done(result: bool) -> bool:
            self._remember(key, result)
            return result

        def failed(failure: Any) -> bool:
            log.failure("access control: a scrypt password check failed", failure)
            return False  # not remembered: the next attempt checks again

        checking = self._slots.run(threads.deferToThread, expected.matches, given)
        return checking.addCallbacks(done, failed)


#: the one checker of this process: its verdicts and its threads are shared by every rule
passwords = PasswordChecker()
