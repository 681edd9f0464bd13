"""acl.conf on disk: read at startup, and read again whenever it changes.

A change is seen within ``RELOAD_INTERVAL`` seconds; a file that became broken or
unreadable keeps the rules in force (and says so once), so a half-written edit never
opens or closes the broker by accident.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from restmq.access.acl import AclError
from restmq.access.acl_file import parse_rules
from restmq.access.rules import AccessRules
from restmq.lifecycle import Periodic

log = Logger(namespace="restmq.acl")

RELOAD_INTERVAL = 5.0  # seconds between looks at the file

#: what a file's stat says about its content: inode, size, modification and change times
FileSignature = tuple[int, int, int, int]


def file_signature(path: str) -> FileSignature:
    """Changes whenever the file is written, replaced, or its permissions change."""
    stat = os.stat(path)
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class RulesFile:
    """The rules of one acl.conf (none: every route open), kept as the file changes."""

    def __init__(self, path: str | None, *, required: bool = False) -> None:
        self.path = os.path.abspath(path) if path else None
        self.required = required
        self.rules = AccessRules()
        self._digest: bytes | None = None  # of the content last read, good or bad
        self._seen: FileSignature | None = None  # the file's stat when it was last read
        self._gone_logged = False
        self._watch: Periodic | None = None

    def load(self) -> None:
        """Read the file at startup; AclError when it is broken or missing but required."""
        if self.path is None:
            log.info("access control: no acl file; every route is open")
            return
        try:
            signature = file_signature(self.path)
            data = self._read()
        except FileNotFoundError:
            if self.required:
                raise AclError(f"acl file {self.path} does not exist") from None
            log.info("access control: no {path}; every route is open", path=self.path)
            return
        except OSError as exc:
            raise AclError(f"cannot read acl file {self.path}: {exc.strerror}") from None
        self._seen = signature
        self._install(data)

    def _read(self) -> bytes:
        with open(self.path, "rb") as handle:
            return handle.read(1024 * 1024)

    def _install(self, data: bytes) -> None:
        self._digest = hashlib.sha256(data).digest()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise AclError(f"acl file {self.path} is not UTF-8 text") from None
        self.rules = parse_rules(text, self.path)
        guarded = [name for name, rules in self.rules.sections.items() if rules.has_rules]
        if guarded:
            log.info(
                "access control: {path} guards {sections}",
                path=self.path,
                sections=", ".join(guarded),
            )
        else:
            log.info("access control: {path} has no rules; every route is open", path=self.path)

    def reload_if_changed(self) -> None:
        """Re-read the file if its content changed; a broken file keeps the rules in force.

        A file whose stat is as it was when last read is neither read nor hashed.
        """
        if self.path is None:
            return
        try:
            # Taken before reading: a write that lands meanwhile changes it again.
            signature = file_signature(self.path)
            if signature == self._seen:
                return
            data = self._read()
        except OSError as exc:
            if not self._gone_logged and self._digest is not None:
                log.error(
                    "access control: cannot read {path} ({error}); keeping the previous rules",
                    path=self.path,
                    error=exc.strerror,
                )
            self._gone_logged = True
            return
        self._gone_logged = False
        self._seen = signature
        if hashlib.sha256(data).digest() == self._digest:
            return
        previous = self.rules
        try:
            self._install(data)
        except AclError as exc:
            self.rules = previous
            log.error(
                "access control: {path} was changed but cannot be used, keeping the previous "
                "rules: {error}",
                path=self.path,
                error=str(exc),
            )
            return
        log.info("access control: reloaded {path}", path=self.path)

    def start_watching(self, clock: Any, interval: float = RELOAD_INTERVAL) -> None:
        """Look at the file every ``interval`` seconds from now on (a file is needed)."""
        if self.path is None or self._watch is not None:
            return
        self._watch = Periodic(
            clock, interval, self.reload_if_changed, what="access control: reload", log=log
        )
        self._watch.start()

    def stop_watching(self) -> defer.Deferred:
        """Stop looking at the file; the Deferred fires once a look under way is over."""
        watch, self._watch = self._watch, None
        return defer.succeed(None) if watch is None else watch.stop()
