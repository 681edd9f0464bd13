"""QueueConsumers: one queue's streaming consumers on this broker, and how a taken
message is handed to them by the queue's policy.

- **broadcast**: every unleased consumer gets every message; ``broadcast`` is the one
  place such copies are sent (batches taken here for them, copies of what a leased
  stream took, batches another broker took and published).
- **roundrobin**: each message goes to exactly one unleased consumer, rotating.

Leased streams take their own batches (restmq.delivery.leased_streams).
"""

from __future__ import annotations

from restmq.delivery.copies import Copies
from restmq.delivery.queue_drain import Line
from restmq.delivery.stream_consumer import StreamConsumer
from restmq.engine.messages import Message, StreamBatch, TakenMessage


class QueueConsumers(Line):
    """The line of a queue's streaming consumers (``members``, in the order they came)."""

    def __init__(self) -> None:
        super().__init__()
        self.next_index = 0  # where the roundrobin rotation goes on
        self.policy: str | None = None  # as the last batch found it

    def has_leased(self) -> bool:
        """Whether any of these consumers is a leased one."""
        return any(consumer.leased for consumer in self.members)

    def leased(self) -> list[StreamConsumer]:
        return [consumer for consumer in self.members if consumer.leased]

    def unleased(self) -> list[StreamConsumer]:
        return [consumer for consumer in self.members if not consumer.leased]

    def broadcast(self, message: Message, copies: Copies | None = None) -> None:
        """Send ``message`` to every unleased consumer here; ``copies`` as in
        StreamConsumer.send (None: not ours to put back)."""
        for consumer in self.unleased():
            consumer.send(message, copies)

    def hand_out(self, batch: StreamBatch, ours: bool) -> list[TakenMessage]:
        """Give each message of a batch taken here out by policy; return those no
        consumer took. ``ours``: whether the batch's publication counted this broker.

        A message taken here goes back later too if every consumer holding it
        leaves before writing it (see Copies).
        """
        if batch.policy != "roundrobin" and batch.published_to > int(ours):
            # Other brokers hand this batch to their consumers too: never put it back.
            for message in batch.messages:
                self.broadcast(message)
            return []
        leftovers = []
        for message in batch.messages:
            copies = Copies(message)
            # Held by the hand-out itself until every consumer had its turn, so that
            # one dropped meanwhile (too slow) cannot send it back while others get it.
            copies.take()
            if batch.policy == "roundrobin":
                self._send_to_next(message, copies)
            else:
                self.broadcast(message, copies)
            if copies.release():
                leftovers.append(message)  # no consumer here took it
        return leftovers

    def _send_to_next(self, message: TakenMessage, copies: Copies) -> bool:
        consumers = self.unleased()
        for _ in range(len(consumers)):
            index = self.next_index % len(consumers)
            self.next_index = index + 1
            consumer = consumers[index]
            if consumer.can_take_more() and consumer.send(message, copies):
                return True
        # Every consumer is busy: give it to a paused one rather than take it back.
        return any(not consumer.gone and consumer.send(message, copies) for consumer in consumers)
