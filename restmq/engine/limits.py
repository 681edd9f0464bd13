"""How much one engine call may do: the bounds its scripts run within."""

from __future__ import annotations

MAX_BATCH = 1000  # messages one call may add or take, receipts one ack or release may name
POP_BYTES = 16 * 1024 * 1024  # a batch pop stops once its bodies reach this
STREAM_BATCH_BYTES = 1024 * 1024  # likewise a batch taken for streaming consumers
LEASE_RETURN_LIMIT = 1000  # overdue leases one script call ends at most
SWEEP_QUEUES = 100  # queues one sweep step visits at most
DUE_MOVE_LIMIT = 1000  # due messages one script call moves to a queue's tail at most
