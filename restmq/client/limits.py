"""The protocol's limits on what one request may ask for, checked before anything is sent.

They are copies of the broker's (docs/protocol.md), not imports: the client talks HTTP
and loads no broker module. tests/test_cli_stands_apart.py keeps them equal.
"""

from __future__ import annotations

MAX_BATCH = 1000  # messages one request may add or take
MAX_LEASE = 12 * 3600  # seconds a lease may last
MAX_WAIT = 60  # seconds a take may wait for a message
MAX_DELAY = 7 * 24 * 3600  # seconds a push may be delayed
MAX_TTL = 10 * 365 * 24 * 3600  # seconds a message may live
MAX_PREFETCH = 1000  # unacknowledged messages a leased stream may hold


def whole_number(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int within [low, high]; ValueError naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high}, not {value}")
    return value
