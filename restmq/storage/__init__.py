"""Talking to the Redis (or Valkey) where queues live: the pool (``client``), pub/sub, Sentinel."""
