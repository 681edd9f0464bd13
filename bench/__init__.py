"""RestMQ benchmarks (``make bench``, ``python -m bench --help``).

Scenarios: ``rest`` (produce and pop vs a bare cyclone handler, Redis round trips)
and the streaming ones (``latency``, ``fanout``, ``memory``).
Everything runs on loopback against servers the benchmark starts and stops itself.
"""
