"""The client's pure parts, in process: how ``push`` cuts batches, how ``stats`` lays out."""

from __future__ import annotations

import json

from restmq.cli.output import message_line, stats_rows, table
from restmq.cli.push import batches


def test_batches_keep_the_order_and_respect_both_the_count_and_the_size():
    values = [f"v{i}" for i in range(25)]
    cut = list(batches(values, 10))
    assert [len(b) for b in cut] == [10, 10, 5]
    assert [v for b in cut for v in b] == values
    big = ["x" * 400_000] * 5  # about 400 KB of JSON each: two fit under 1 MiB
    assert [len(b) for b in batches(big, 1000)] == [2, 2, 1]
    # a single value larger than the size limit still goes, alone
    assert [len(b) for b in batches(["y" * 2_000_000, "z"], 1000)] == [1, 1]


def test_the_stats_table_names_policies_and_statuses_and_aligns_numbers():
    answer = {
        "queues": {
            "jobs": {"name": "jobs", "len": 1200, "status": 0, "policy": 2, "consumers": 3},
            "a": {"name": "a", "len": 7, "status": 1, "policy": 1, "consumers": 0},
        },
        "redis": "<Redis Connection: ...>",
        "count": 2,
    }
    assert table(stats_rows(answer)).splitlines() == [
        "QUEUE   LEN  STATUS   POLICY      CONSUMERS",
        "a         7  started  broadcast           0",
        "jobs   1200  stopped  roundrobin          3",
    ]


def test_figures_a_newer_broker_adds_show_up_as_columns():
    answer = {"redis": "...", "queue": "q", "len": 2, "consumers": 0, "leased": 5, "dead": 1}
    assert table(stats_rows(answer)).splitlines() == [
        "QUEUE  LEN  CONSUMERS  DEAD  LEASED",
        "q        2          0     1       5",
    ]


def test_message_lines():
    message = {"key": "q:1", "value": "héllo", "count": 0, "receipt": "q:1@1"}
    assert message_line(message, as_json=False, with_receipt=False) == "héllo"
    assert message_line(message, as_json=False, with_receipt=True) == "q:1@1\théllo"
    assert json.loads(message_line(message, as_json=True, with_receipt=True)) == message
