"""The Redis key layout: the one module that knows the keys' names.

It is the layout of the original RestMQ, so a Redis written by it is served as it is:

==========================  =======  =============================================
key                         type     holds
==========================  =======  =============================================
``QUEUESET``                set      the names of all queues
``<q>:UUID``                string   last message number of queue q
``<q>:<n>``                 string   the body of message n
``<q>:queue``               list     message keys, new ones LPUSHed, taken by RPOP
``<q>:queuepolicy``         string   ``1`` broadcast, ``2`` roundrobin (absent: 1)
``queuestat::<q>``          string   ``1`` started, ``0`` stopped
``<q>:<n>:refcount``        string   how often message n was peeked
``<q>:leased``              zset     keys handed out under a lease, scored by the
                                     lease deadline (ms, Redis ``TIME``)
``<q>:deliveries``          hash     message key -> times handed out under a lease
``<q>:maxdeliveries``       string   deliveries before a message is dead (absent: no limit)
``<q>:delayed``             zset     keys of delayed messages, scored by when they are
                                     due (ms, Redis ``TIME``); due ones go to the tail
``restmq:leasing``          zset     queues that have leases or delayed messages, scored
                                     by their earliest deadline or due time (what the
                                     sweepers read: the timer index)
``<q>:leasedstreams``       zset     brokers with leased streaming consumers of q ->
                                     until when (ms, Redis ``TIME``); expires unrefreshed
``restmq:brokers``          zset     ids of the brokers that have streaming consumers,
                                     scored by when their counts expire (ms)
``restmq:consumers:<id>``   hash     queue -> streaming consumers of broker ``<id>``;
                                     expires unless the broker writes it again
``<q>:maxlength``           string   messages the queue may hold, pending and delayed
                                     (absent: no bound, the original's keys only)
``<q>:subscriptions``       set      names of q's durable subscriptions: while it has
                                     any, an add to q goes to each ``q:<name>`` instead
``<q>#idempotency:<k>``     string   what an add with Idempotency-Key k answered (with
                                     its payload's digest), for the window; ``#`` is in
                                     no queue's name, so no queue's key can be one
==========================  =======  =============================================

The leased-stream key exists only while some broker has leased streams of the queue.
The five before it exist only once leases (or max_deliveries, or a delay) are used, so a
queue used without them keeps exactly the original keys. A leased message keeps its body until it is
acknowledged. The dead letters of ``q`` are the ordinary queue ``q:dead``: its list
holds the original keys ``q:<n>``, nothing is copied. ``restmq:leasing`` cannot be a
key of any queue: a queue's keys end in ``:queue``, ``:maxlength``, ``:UUID``, ``:queuepolicy``,
``:leased``, ``:deliveries``, ``:maxdeliveries``, ``:leasedstreams``, ``:delayed``, ``:<n>`` or
``:<n>:refcount``, or start with ``queuestat::``; neither can ``restmq:brokers`` nor
``restmq:consumers:<id>``, as a broker id is ``b`` and hex digits.

Besides keys, each queue has a pub/sub channel ``restmq:notify:<db>:<q>`` (``<db>``
the database number: channels are server-wide) on which the scripts announce
adds, purges and setting changes, so that every broker sharing the Redis can
wake its streaming consumers at once (restmq.engine.notices, docs/brokers.md).

The Lua scripts (restmq/engine/lua) are handed the keys, or the prefixes and
suffixes to build them, by the engine; the message keys ``<q>:<n>`` and
``<q>:<n>:refcount`` are the only ones they spell themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

QUEUESET = "QUEUESET"
LEASING = "restmq:leasing"  # the leasing index (see the key table above)
BROKERS = "restmq:brokers"  # brokers whose consumer counts are live
CONSUMERS_PREFIX = "restmq:consumers:"  # + broker id: its consumer counts
NOTIFY_PREFIX = "restmq:notify:"  # + database number + ":" + queue: its channel

#: Every status key starts with it (``queuestat:`` + ``:<q>``); no queue name may, or
#: its keys would fall among the other queues' status keys.
STATUS_PREFIX = "queuestat:"
STATUS_KEYS = f"{STATUS_PREFIX}:"  # + queue: its status key

LIST_SUFFIX = ":queue"
POLICY_SUFFIX = ":queuepolicy"
LEASED_SUFFIX = ":leased"
DEAD_SUFFIX = ":dead"  # the dead letters of q are the queue q:dead
DELAYED_SUFFIX = ":delayed"

#: What ``<q>:queuepolicy`` holds for each policy.
POLICIES = {"broadcast": "1", "roundrobin": "2"}
POLICY_NAMES = {number: name for name, number in POLICIES.items()}
#: What ``queuestat::<q>`` holds.
STARTED, STOPPED = 1, 0


def list_key(queue: str) -> str:
    return f"{queue}{LIST_SUFFIX}"


def counter_key(queue: str) -> str:
    return f"{queue}:UUID"


def policy_key(queue: str) -> str:
    return f"{queue}{POLICY_SUFFIX}"


def status_key(queue: str) -> str:
    return f"{STATUS_KEYS}{queue}"


def leased_key(queue: str) -> str:
    return f"{queue}{LEASED_SUFFIX}"


def deliveries_key(queue: str) -> str:
    return f"{queue}:deliveries"


def delayed_key(queue: str) -> str:
    return f"{queue}{DELAYED_SUFFIX}"


def max_deliveries_key(queue: str) -> str:
    return f"{queue}:maxdeliveries"


def max_length_key(queue: str) -> str:
    return f"{queue}:maxlength"


def leased_streams_key(queue: str) -> str:
    return f"{queue}:leasedstreams"


def consumers_key(broker_id: str) -> str:
    return f"{CONSUMERS_PREFIX}{broker_id}"


def dead_queue(queue: str) -> str:
    """The queue that holds the dead letters of ``queue``."""
    return f"{queue}{DEAD_SUFFIX}"


def subscriptions_key(queue: str) -> str:
    return f"{queue}:subscriptions"


def subscription_queue(queue: str, name: str) -> str:
    """The queue subscription ``name`` of ``queue`` delivers to (an ordinary queue)."""
    return f"{queue}:{name}"


def channel_prefix(dbid: int | str) -> str:
    """What the channel of every queue of database ``dbid`` starts with.

    Channels are server-wide, not per database, so the database number is part of
    the name: brokers on other databases of the server never hear it.
    """
    return f"{NOTIFY_PREFIX}{dbid}:"


def is_count(text: str, most_digits: int) -> bool:
    """True if ``text`` is 1 to ``most_digits`` ASCII digits (no sign, no space)."""
    return 0 < len(text) <= most_digits and text.isascii() and text.isdigit()


def is_message_key(queue: str, key: str) -> bool:
    """True if ``key`` names a message ``queue`` may hold.

    That is ``<queue>:<n>``; a dead-letter queue ``q:dead`` also holds the
    original keys ``q:<n>`` of the queue its messages died in.
    """
    owner, colon, number = key.rpartition(":")
    if not colon or not is_count(number, len(number)):
        return False
    while owner != queue:
        if not queue.endswith(DEAD_SUFFIX):
            return False
        queue = queue[: -len(DEAD_SUFFIX)]
    return True


# -- the two layouts ----------------------------------------------------------------
#
# The engine asks a layout for the keys of a queue. It does so through the queue's
# *stem*: the text every key of the queue is built from (``<stem>:queue``,
# ``queuestat::<stem>``, the message keys ``<stem>:<n>``...). On a standalone server
# or behind Sentinel the stem is the queue's name, so the keys are those of 2009. On a
# Valkey Cluster the stem carries a hash tag, so that every key of a queue hashes to
# one slot and each operation stays one script on one shard (see docs/cluster.md).

#: Keys of the cluster layout that belong to no queue; they share one hash tag, and no
#: queue key can equal them (a queue's keys start with ``{`` or ``queuestat:``).
CLUSTER_GLOBAL_TAG = "{restmq}"
CLUSTER_QUEUES = f"restmq:{CLUSTER_GLOBAL_TAG}:queues"  # set: the queue families
CLUSTER_BROKERS = f"restmq:{CLUSTER_GLOBAL_TAG}:brokers"
CLUSTER_CONSUMERS_PREFIX = f"restmq:{CLUSTER_GLOBAL_TAG}:consumers:"


def family_of(queue: str) -> str:
    """The family ``queue`` belongs to on a cluster: its name up to the first ``:`` (that
    does not begin it). ``q``, its dead letters ``q:dead`` and any queue ``q:<more>``
    (its subscriptions, say) are one family, kept in one slot, so that moving a message
    between them stays one script."""
    start = len(queue) - len(queue.lstrip(":"))
    colon = queue.find(":", start)
    return queue if colon < 0 else queue[:colon]


@dataclass(frozen=True)
class KeyLayout:
    """The 2009 layout (standalone and Sentinel): a queue's stem is its name."""

    clustered = False
    registry_key_name = QUEUESET  # what the scripts call the registry in their comments

    def stem(self, queue: str) -> str:
        return queue

    def queue_of_stem(self, stem: str) -> str:
        return stem

    def registry(self, queue: str) -> str:
        """The set that lists ``queue`` (and its dead letters) once it has had a message."""
        return QUEUESET

    def leasing(self, queue: str) -> str:
        """The sorted set of queues with leases that ``queue``'s leases are indexed in."""
        return LEASING

    def brokers(self) -> str:
        return BROKERS

    def consumers_prefix(self) -> str:
        return CONSUMERS_PREFIX

    def channel_prefix(self, dbid: int | str) -> str:
        return channel_prefix(dbid)


@dataclass(frozen=True)
class ClusterKeyLayout(KeyLayout):
    """The Valkey Cluster layout: every key of queue ``q`` carries the hash tag of
    ``q``'s family (its name up to the first ``:``), so a queue, its dead letters and
    the queues named after it live in one slot.

    ==============================  ================================================
    queue                           stem
    ==============================  ================================================
    ``jobs``                        ``{jobs}``
    ``jobs:dead``                   ``{jobs}:dead``
    ``jobs:eu``                     ``{jobs}:eu``
    ==============================  ================================================

    so the list of ``jobs`` is ``{jobs}:queue``, its status ``queuestat::{jobs}``, its
    messages ``{jobs}:1``, ``{jobs}:2``... Each family has its own registry
    ``{jobs}:queues`` (the stems of its queues that have had messages) and leasing index
    ``{jobs}:leasing``; the families are listed in ``restmq:{restmq}:queues``, which a
    broker writes once per family (not on every add). Channels are
    ``restmq:notify:<stem>``, in the family's slot too (sharded pub/sub).
    """

    clustered = True

    def stem(self, queue: str) -> str:
        family = family_of(queue)
        return f"{{{family}}}{queue[len(family) :]}"

    def queue_of_stem(self, stem: str) -> str:
        """The queue a stem belongs to (``{jobs}:dead`` -> ``jobs:dead``); queue names
        hold no braces, so the tag's are the only ones."""
        end = stem.find("}")
        if not stem.startswith("{") or end < 0:
            return stem  # not a stem of this layout: shown as it is
        return stem[1:end] + stem[end + 1 :]

    def registry(self, queue: str) -> str:
        return f"{{{family_of(queue)}}}:queues"

    def leasing(self, queue: str) -> str:
        return f"{{{family_of(queue)}}}:leasing"

    def brokers(self) -> str:
        return CLUSTER_BROKERS

    def consumers_prefix(self) -> str:
        return CLUSTER_CONSUMERS_PREFIX

    def channel_prefix(self, dbid: int | str) -> str:
        return NOTIFY_PREFIX  # a cluster has database 0 only; the stem brings the tag


STANDALONE = KeyLayout()
CLUSTER = ClusterKeyLayout()
