"""Delayed messages outlive a broker restart: they wait in Redis, not in the broker, and
the restarted broker delivers them once due."""

from __future__ import annotations

from tests.support import wait_for


def test_delayed_messages_survive_a_restart_of_the_broker(broker_factory, tmp_path):
    broker = broker_factory(workdir=tmp_path)
    keys = [broker.post("/q/later", value=f"m{i}", delay=2).text.strip() for i in range(3)]
    assert broker.post("/q/later", value="in a minute", delay=60).status == 200
    broker.stop()  # SIGTERM while the messages are delayed
    broker.start()  # on the same data directory
    taken: list[dict] = []

    def all_taken() -> bool:
        taken.extend(broker.get("/q/later?n=10").json())
        return len(taken) >= 3

    wait_for(all_taken, 15, interval=0.1, what="every delayed message")
    assert [m["key"] for m in taken] == keys
    assert [m["value"] for m in taken] == ["m0", "m1", "m2"]
    assert broker.get("/stats/later").json()["delayed"] == 1  # still waiting, still there
