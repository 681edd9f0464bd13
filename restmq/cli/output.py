"""What the commands print: message lines and the stats table."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

# /stats/ keeps the numbers the original stored for these
_STATUS_NAMES = {0: "stopped", 1: "started"}
_POLICY_NAMES = {1: "broadcast", 2: "roundrobin"}
_FIRST_COLUMNS = ("queue", "len", "status", "policy", "consumers")


def message_line(message: Mapping[str, Any], *, as_json: bool, with_receipt: bool) -> str:
    """One popped or streamed message: its value; ``receipt<TAB>value`` under a lease;
    the whole JSON object with ``as_json``."""
    if as_json:
        return json.dumps(message, ensure_ascii=False)
    value = message.get("value")
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if with_receipt:
        return f"{message.get('receipt', '')}\t{text}"
    return text


def stats_rows(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of a ``/stats/`` or ``/stats/<queue>`` answer, one per queue."""
    if "queues" in answer:
        entries = [dict(entry, queue=name) for name, entry in sorted(answer["queues"].items())]
    else:
        entries = [dict(answer)]
    rows = []
    for entry in entries:
        entry.pop("name", None)
        entry.pop("redis", None)  # the broker's connection, not a figure of the queue
        if "status" in entry:
            entry["status"] = _STATUS_NAMES.get(entry["status"], entry["status"])
        if "policy" in entry:
            entry["policy"] = _POLICY_NAMES.get(entry["policy"], entry["policy"])
        rows.append(entry)
    return rows


def table(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows as aligned columns under a header; numbers right-aligned. Columns are every
    key the rows have (a newer broker's extra figures show up by themselves)."""
    rows = list(rows)
    columns = [c for c in _FIRST_COLUMNS if any(c in row for row in rows)]
    columns += sorted({key for row in rows for key in row} - set(columns))
    cells = [[_cell(row.get(column, "")) for column in columns] for row in rows]
    widths = [
        max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)
    ]
    numeric = [all(_is_number(row.get(column)) for row in rows) for column in columns]

    def render(values: list[str]) -> str:
        parts = []
        for value, width, right in zip(values, widths, numeric, strict=True):
            parts.append(value.rjust(width) if right else value.ljust(width))
        return "  ".join(parts).rstrip()

    return "\n".join([render([c.upper() for c in columns])] + [render(c) for c in cells])


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
