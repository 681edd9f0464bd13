"""The protocol's limits on what one request may ask for, as the command checks them.

They are the HTTP protocol's (docs/protocol.md): the broker refuses anything beyond them
with a 400, and the command refuses it before sending. They are the Python client's
copies (restmq.client.limits), not the broker's modules: the command loads none of
those; a test keeps them equal to the broker's (restmq.operations.validation).
"""

from __future__ import annotations

from restmq.client.limits import MAX_BATCH, MAX_DELAY, MAX_LEASE, MAX_TTL, MAX_WAIT

__all__ = ["MAX_BATCH", "MAX_DELAY", "MAX_LEASE", "MAX_TTL", "MAX_WAIT"]
