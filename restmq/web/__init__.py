"""The HTTP side: a cyclone Application whose thin handlers call restmq.operations."""
