"""The HTTP side: a cyclone Application whose thin handlers call the engine."""
