"""RestMQ: a message broker over HTTP/JSON that keeps its queues in Redis."""

__version__ = "2.0.0.dev0"
