"""The engine's Lua scripts (restmq/engine/lua), loaded once, each under its file's name.

The scripts announce changes on the queue's channel with ``PUBLISH`` on a standalone
server, ``SPUBLISH`` (sharded pub/sub: the channel lives in the queue's slot) on a
Valkey Cluster. A script says ``redis.call(PUBLISH, ...)``; the line put in front of
its text says which of the two that is, so each store has its own ScriptSet and the
scripts' text is otherwise the same in every mode.
"""

from __future__ import annotations

from importlib import resources

from restmq.engine.limits import DUE_MOVE_LIMIT
from restmq.storage.client import LuaScript


def _lua_source(name: str) -> str:
    return resources.files("restmq.engine").joinpath("lua", f"{name}.lua").read_text("utf-8")


class ScriptSet:
    """Every script, built for one publish command (``PUBLISH`` or ``SPUBLISH``)."""

    def __init__(self, publish: str) -> None:
        self.publish = publish
        self.ADD = self._script("add")
        # only its peek counter changes (and due messages move, as before every take)
        self.PEEK = self._taking_script("peek", writes=False)
        self.DELETE = self._script("delete")
        self.PURGE = self._script("purge")
        self.SET_AND_NOTIFY = self._script("set_and_notify")
        self.STATS = self._script("stats", writes=False)
        self.QUEUE_STATS = self._script("queue_stats", writes=False)
        self.CONSUMER_TOTALS = self._script("consumer_totals", writes=False)
        self.REPORT_CONSUMERS = self._script("report_consumers")
        self.QUEUE_INFO = self._script("queue_info", writes=False)
        self.TAKE_FOR_STREAMS = self._taking_script("take_for_streams")
        self.REQUEUE = self._script("requeue")
        self.STREAM_LEASERS = self._script("stream_leasers")
        # The lease scripts; ``pop`` is one too, as it ends the queue's overdue leases first.
        self.LEASE = self._lease_script("lease")
        self.POP = self._lease_script("pop")
        self.ACK = self._lease_script("ack")
        self.CHANGE_LEASE = self._lease_script("change_lease")
        self.REQUEUE_OVERDUE = self._lease_script("requeue_overdue")
        self.SWEEP_LEASES = self._lease_script("sweep_leases")
        self.LEASE_FOR_STREAMS = self._lease_script("lease_for_streams")

    def _prelude(self) -> str:
        return f"local PUBLISH = '{self.publish}'\n"

    def _script(self, name: str, *, writes: bool = True) -> LuaScript:
        return LuaScript(name, self._prelude() + _lua_source(name), writes=writes)

    def _taking_script(self, name: str, *, writes: bool = True) -> LuaScript:
        """A script that takes, with the delayed-message functions (lua/due_lib.lua) in
        front: every take first moves its queue's due messages."""
        return LuaScript(name, self._due_prelude() + _lua_source(name), writes=writes)

    def _due_prelude(self) -> str:
        return f"{self._prelude()}local DUE_LIMIT = {DUE_MOVE_LIMIT}\n{_lua_source('due_lib')}\n"

    def _lease_script(self, name: str) -> LuaScript:
        """A lease script with the shared lease functions (lua/lease_lib.lua) in front,
        and the delayed-message ones (lua/due_lib.lua) before those."""
        source = self._due_prelude() + _lua_source("lease_lib") + "\n" + _lua_source(name)
        return LuaScript(name, source)


STANDALONE = ScriptSet("PUBLISH")
CLUSTER = ScriptSet("SPUBLISH")
