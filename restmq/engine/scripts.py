"""The engine's Lua scripts (restmq/engine/lua), loaded once, each under its file's name."""

from __future__ import annotations

from importlib import resources

from restmq.storage.client import LuaScript


def _lua_source(name: str) -> str:
    return resources.files("restmq.engine").joinpath("lua", f"{name}.lua").read_text("utf-8")


def _script(name: str, *, writes: bool = True) -> LuaScript:
    return LuaScript(name, _lua_source(name), writes=writes)


def _lease_script(name: str) -> LuaScript:
    """A lease script with the shared lease functions (lua/lease_lib.lua) in front."""
    return LuaScript(name, _lua_source("lease_lib") + "\n" + _lua_source(name))


ADD = _script("add")
PEEK = _script("peek", writes=False)  # only its peek counter changes
DELETE = _script("delete")
PURGE = _script("purge")
SET_AND_NOTIFY = _script("set_and_notify")
STATS = _script("stats", writes=False)
QUEUE_STATS = _script("queue_stats", writes=False)
REPORT_CONSUMERS = _script("report_consumers")
QUEUE_INFO = _script("queue_info", writes=False)
TAKE_FOR_STREAMS = _script("take_for_streams")
REQUEUE = _script("requeue")
STREAM_LEASERS = _script("stream_leasers")

# The lease scripts; ``pop`` is one too, as it ends the queue's overdue leases first.
LEASE = _lease_script("lease")
POP = _lease_script("pop")
ACK = _lease_script("ack")
CHANGE_LEASE = _lease_script("change_lease")
REQUEUE_OVERDUE = _lease_script("requeue_overdue")
SWEEP_LEASES = _lease_script("sweep_leases")
LEASE_FOR_STREAMS = _lease_script("lease_for_streams")
