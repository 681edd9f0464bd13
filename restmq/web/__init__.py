"""The HTTP side: a cyclone Application; its thin handlers call restmq.operations."""
