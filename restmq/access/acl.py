"""The vocabulary of access control: acl.conf's sections and keys, and its two errors.

Every front end names the sections through these constants and answers ``Refused``
(401 or 403). The rest of restmq.access reads the file (acl_file), decides
(rules, clients, password_checks), keeps the rules current (watcher) and checks
requests (control).
"""

from __future__ import annotations

from restmq.errors import RestMQError

#: The acl.conf sections; every front end names them through these constants.
PRODUCER = "rest:producer"  # adding, purging, deleting, settings (POST/DELETE)
CONSUMER = "rest:consumer"  # popping, peeking, reading settings and figures (GET)
COMET = "comet:consumer"  # /c/<queue> streams (COMET and Server-Sent Events)
WEBSOCKET = "websocket:consumer"  # /ws/<queue>
SECTIONS = (PRODUCER, CONSUMER, COMET, WEBSOCKET)
KEYS = ("hosts_allow", "hosts_deny", "username", "password")
#: sections whose clients may also log in with the original ``auth=user:password`` cookie
COOKIE_SECTIONS = frozenset({WEBSOCKET})
REALM = "RestMQ Restricted Access"
CHALLENGE = {"WWW-Authenticate": f'Basic realm="{REALM}"'}


class AclError(Exception):
    """acl.conf cannot be used; the message says where and why."""


class Refused(RestMQError):
    """A request acl.conf does not let through: 403 (address) or 401 (credentials)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
