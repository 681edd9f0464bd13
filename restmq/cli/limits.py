"""The protocol's limits on what one request may ask for, as the command checks them.

They are the HTTP protocol's (docs/protocol.md): the broker refuses anything
beyond them with a 400, and the command refuses it before sending. They are copies,
not imports, because the command talks to a broker over HTTP and loads none of its
modules; a test keeps them equal to the broker's (restmq.operations.validation).
"""

from __future__ import annotations

MAX_BATCH = 1000  # messages one request may take (``?n=``)
MAX_LEASE = 12 * 3600  # seconds a lease may last (``?lease=``)
MAX_WAIT = 60  # seconds a take may wait for a message (``?wait=``)
