"""The one piece of the Redis key layout that restmq.core must share: the status keys.

restmq.core builds every key, but restmq.validation must refuse queue names whose
keys would fall among the queues' status keys (``queuestat::<q>``). core imports
validation, so the prefix both need lives here, below both of them.
"""

from __future__ import annotations

#: Every status key starts with it (``queuestat:`` + ``:<q>``); no queue name may.
STATUS_PREFIX = "queuestat:"
