"""Delayed messages outlive a broker restart: they wait in the store, not in the broker, and
the restarted broker delivers them once due. On the embedded Valkey the broker restarts on
the same data directory; on a Valkey Cluster the broker process restarts and the cluster
keeps the data."""

from __future__ import annotations

from tests.support import STORAGE_MODES, storage_args, wait_for


@STORAGE_MODES
def test_delayed_messages_survive_a_restart_of_the_broker(
    broker_factory, storage, request, tmp_path, queue
):
    broker = broker_factory(*storage_args(storage, request), workdir=tmp_path)
    keys = [broker.post(f"/q/{queue}", value=f"m{i}", delay=2).text.strip() for i in range(3)]
    assert keys == [broker.key(queue, n) for n in (1, 2, 3)]
    assert broker.post(f"/q/{queue}", value="in a minute", delay=60).status == 200
    broker.stop()  # SIGTERM while the messages are delayed
    broker.start()  # on the same data directory (and, on a cluster, the same cluster)
    taken: list[dict] = []

    def all_taken() -> bool:
        taken.extend(broker.get(f"/q/{queue}?n=10").json())
        return len(taken) >= 3

    wait_for(all_taken, 15, interval=0.1, what="every delayed message")
    assert [m["key"] for m in taken] == keys
    assert [m["value"] for m in taken] == ["m0", "m1", "m2"]
    assert broker.get(f"/stats/{queue}").json()["delayed"] == 1  # still waiting, still there
