"""The one piece of the Redis key layout the engine must share: the status keys.

The engine (``restmq.engine.queues``) builds every key, but the operations' validation
must refuse queue names whose keys would fall among the queues' status keys
(``queuestat::<q>``), so the prefix both need lives here.
"""

from __future__ import annotations

#: Every status key starts with it (``queuestat:`` + ``:<q>``); no queue name may.
STATUS_PREFIX = "queuestat:"
