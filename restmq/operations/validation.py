"""Rules for what clients may send: queue names, ttl, batch sizes, message keys, receipts,
policies, JSONP callbacks.

restmq.operations.queue_operations applies them once, at its entry points, and hands the
engine values it can trust; the engine checks nothing again.
"""

from __future__ import annotations

import re

from restmq.engine.keys import (
    DEAD_SUFFIX,
    POLICIES,
    STATUS_PREFIX,
    is_count,
    is_message_key,
    subscription_queue,
)
from restmq.engine.limits import MAX_BATCH
from restmq.engine.messages import receipt_parts
from restmq.errors import InvalidArgument

MAX_QUEUE_NAME = 200
_QUEUE_NAME = re.compile(rf"[A-Za-z0-9_\-.:@]{{1,{MAX_QUEUE_NAME}}}")
_CALLBACK = re.compile(r"[A-Za-z_$][\w$.]*", re.ASCII)  # \w as in JavaScript: ASCII only


#: names found valid lately: most requests name a queue seen lately, and a regex is not free
_VALID_NAMES: set[str] = set()
_VALID_NAMES_KEPT = 4096


def queue_name(name: object) -> str:
    """Return ``name`` if it is a valid queue name, else raise InvalidArgument."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument("a queue name is required")
    if name in _VALID_NAMES:
        return name
    if not _QUEUE_NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid queue name {name[:60]!r}: use 1-{MAX_QUEUE_NAME} letters, digits "
            "and _ - . : @"
        )
    if name in (".", ".."):
        # A URL path segment . or .. is removed by clients (RFC 3986 5.2.4): such a
        # queue could be written by some clients and never reached by others.
        raise InvalidArgument(f"invalid queue name {name!r}: . and .. are path segments")
    if name.startswith(STATUS_PREFIX):
        # Its keys would be other queues' status keys (see restmq.engine.keys).
        raise InvalidArgument(f"queue names may not start with {STATUS_PREFIX!r}")
    if len(_VALID_NAMES) >= _VALID_NAMES_KEPT:
        _VALID_NAMES.clear()
    _VALID_NAMES.add(name)
    return name


def callback_name(name: str | None) -> str | None:
    """A JSONP callback must be a JavaScript identifier path such as ``app.onMessage``."""
    if name is None:
        return None
    if not _CALLBACK.fullmatch(name) or len(name) > 200:
        raise InvalidArgument(
            f"invalid callback {name[:60]!r}: use a JavaScript name such as app.on_message"
        )
    return name


def ttl_seconds(value: object) -> int | None:
    """A ttl is a positive whole number of seconds; None or '' means no ttl."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidArgument("ttl must be a positive whole number of seconds")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 60.0 is the whole number 60
    try:
        ttl = int(value) if isinstance(value, int) else int(str(value).strip(), 10)
    except ValueError:
        raise InvalidArgument(
            f"ttl must be a positive whole number of seconds, not {str(value)[:40]!r}"
        ) from None
    if ttl <= 0 or ttl > 10 * 365 * 24 * 3600:
        raise InvalidArgument("ttl must be between 1 second and 10 years")
    return ttl


def batch_size(value: object) -> int:
    """The ``n`` of a batch take (``GET /q/<q>?n=``): 1 to MAX_BATCH.

    Batch adds are limited to MAX_BATCH values too (Operations.add_many).
    """
    try:
        n = (
            int(value)
            if isinstance(value, int) and not isinstance(value, bool)
            else int(str(value).strip(), 10)
        )
    except ValueError:
        raise InvalidArgument(f"n must be a whole number from 1 to {MAX_BATCH}") from None
    if not 1 <= n <= MAX_BATCH:
        raise InvalidArgument(f"n must be a whole number from 1 to {MAX_BATCH}, not {n}")
    return n


MAX_LEASE = 12 * 3600  # seconds a lease may last
MAX_DELIVERIES = 1000  # the highest max_deliveries a queue may have


def _whole_number(value: object, what: str, low: int, high: int) -> int:
    """``value`` (an int or its decimal text) if it is from ``low`` to ``high``."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a whole number from {low} to {high}")
    try:
        number = value if isinstance(value, int) else int(str(value).strip(), 10)
    except ValueError:
        raise InvalidArgument(
            f"{what} must be a whole number from {low} to {high}, not {str(value)[:40]!r}"
        ) from None
    if not low <= number <= high:
        raise InvalidArgument(f"{what} must be a whole number from {low} to {high}, not {number}")
    return number


def lease_seconds(value: object, *, release: bool = False) -> int:
    """A lease length in seconds: 1 to MAX_LEASE; 0 too when ``release`` (ends it now)."""
    return _whole_number(value, "lease", 0 if release else 1, MAX_LEASE)


MAX_PREFETCH = 1000  # unacknowledged messages a leased stream may hold
DEFAULT_PREFETCH = 10


def prefetch(value: object) -> int:
    """A leased stream's window: 1 to MAX_PREFETCH unacknowledged messages."""
    return _whole_number(value, "prefetch", 1, MAX_PREFETCH)


def max_deliveries(value: object) -> int:
    """A queue's max_deliveries: 0 (no limit) to MAX_DELIVERIES."""
    return _whole_number(value, "max_deliveries", 0, MAX_DELIVERIES)


MAX_LENGTH = 10**9  # the highest max_length a queue may have


def max_length(value: object) -> int:
    """A queue's max_length: 0 (no bound) to MAX_LENGTH messages."""
    return _whole_number(value, "max_length", 0, MAX_LENGTH)


MAX_DELAY = 604800  # seconds a message may be delayed (a week)


def delay_seconds(value: object) -> int:
    """How long an added message waits before it can be taken: 0 (not at all; also when
    absent) to MAX_DELAY seconds."""
    if value is None or value == "":
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 60.0 is the whole number 60
    return _whole_number(value, "delay", 0, MAX_DELAY)


#: an Idempotency-Key: 1 to 255 visible ASCII characters
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def idempotency_key(value: object) -> str | None:
    """An idempotency key (1-255 visible ASCII characters), or None when none was given."""
    if value is None:
        return None
    if not isinstance(value, str) or not _IDEMPOTENCY_KEY.fullmatch(value):
        raise InvalidArgument(
            "an Idempotency-Key is 1 to 255 visible ASCII characters (no spaces), such as "
            '"8e03978e-40d5"'
        )
    return value


MAX_WAIT = 60  # seconds a long-poll request may wait for a message


def wait_seconds(value: object) -> int:
    """How long a take may wait for a message: 0 (not at all; also when absent) to MAX_WAIT."""
    if value is None or value == "":
        return 0
    return _whole_number(value, "wait", 0, MAX_WAIT)


def message_key(queue: str, key: object, stem: str | None = None) -> str:
    """The key of a message ``queue`` may hold (``<stem>:<n>``, the stem being the queue's
    name unless the store's key layout says otherwise; see keys.is_message_key)."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument("the key of a message is required, such as q:1")
    if not is_message_key(stem or queue, key):
        raise InvalidArgument(f"{key[:80]!r} is not a message key of queue {queue!r}")
    return key


def receipt_text(value: object) -> str:
    """A receipt is given: non-empty text (whose form ``receipt_of`` checks)."""
    if not isinstance(value, str) or not value:
        raise InvalidArgument("a receipt is required, such as q:5@1")
    return value


def receipt_of(queue: str, value: str, stem: str | None = None) -> str:
    """``value`` if it is a receipt of ``queue``: ``<key>@<deliveries>``, the key one of
    its messages' (the lease may have ended: the engine tells); ``stem`` as for
    ``message_key``."""
    if len(value) <= 2 * MAX_QUEUE_NAME:
        key, deliveries = receipt_parts(value)
        if is_count(deliveries, 9) and is_message_key(stem or queue, key):
            return value
    raise InvalidArgument(f"{value[:80]!r} is not a receipt of queue {queue!r}")


def receipt(queue: str, value: object, stem: str | None = None) -> str:
    """One receipt of ``queue``."""
    return receipt_of(queue, receipt_text(value), stem)


def receipts(queue: str, values: object, stem: str | None = None) -> list[str]:
    """1 to MAX_BATCH receipts of ``queue`` (a list of text)."""
    if isinstance(values, str) or not all(isinstance(value, str) for value in values):
        raise InvalidArgument("a receipt is text such as q:5@1")
    values = list(values)
    if not values:
        raise InvalidArgument("a receipt is required")
    if len(values) > MAX_BATCH:
        raise InvalidArgument(f"at most {MAX_BATCH} receipts per request")
    return [receipt_of(queue, value, stem) for value in values]


def policy(word: object) -> str:
    """A delivery policy, which must be given: broadcast or roundrobin."""
    if not isinstance(word, str) or not word:
        raise InvalidArgument("policy is required: broadcast or roundrobin")
    return known_policy(word)


def known_policy(word: object) -> str:
    """``word`` if it is broadcast or roundrobin."""
    if word not in POLICIES:
        raise InvalidArgument(f"invalid policy {str(word)[:40]!r}: use broadcast or roundrobin")
    return str(word)


#: a subscription's name: queue-name characters but ``:`` (its queue is ``<queue>:<name>``)
_SUBSCRIPTION_NAME = re.compile(r"[A-Za-z0-9_\-.@]+")
#: names whose queue ``<queue>:<name>`` would be another thing of the queue: its dead letters
RESERVED_SUBSCRIPTIONS = frozenset({DEAD_SUFFIX[1:]})


def subscription(queue: object, name: object) -> tuple[str, str]:
    """``(queue, name)`` if ``queue`` may have a subscription ``name``: a queue name but
    a dead-letter queue's (dead letters are moved there, never added, so nothing would
    fan out), and a name of queue-name characters without ``:``, not a reserved one,
    whose queue ``<queue>:<name>`` is a valid queue name."""
    queue = queue_name(queue)
    if queue.endswith(DEAD_SUFFIX):
        raise InvalidArgument(
            f"queue {queue[:60]!r} holds dead letters, which are moved there, never added: "
            "it cannot have subscriptions"
        )
    if not isinstance(name, str) or not name:
        raise InvalidArgument("a subscription name is required")
    if not _SUBSCRIPTION_NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidArgument(
            f"invalid subscription name {name[:60]!r}: use letters, digits and _ - . @ "
            "(no :), not . or .."
        )
    if name in RESERVED_SUBSCRIPTIONS:
        raise InvalidArgument(
            f"invalid subscription name {name!r}: {', '.join(sorted(RESERVED_SUBSCRIPTIONS))} "
            "are reserved"
        )
    delivers_to = subscription_queue(queue, name)
    if len(delivers_to) > MAX_QUEUE_NAME:
        raise InvalidArgument(
            f"subscription name {name[:60]!r} is too long: its queue {delivers_to[:60]!r}... "
            f"would pass {MAX_QUEUE_NAME} characters"
        )
    return queue, name
