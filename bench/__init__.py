"""RestMQ benchmarks (``make bench``, ``python -m bench --help``).

Scenarios: ``rest`` (issue 3: produce and pop vs a bare cyclone handler, Redis round
trips) and the streaming ones of issue 4 (``latency``, ``fanout``, ``memory``).
Everything runs on loopback against servers the benchmark starts and stops itself.
"""
