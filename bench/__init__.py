"""Heimdex benchmark harness: ``python -m bench.run`` (``make bench``) and ``python -m bench.tuning``.

Benchmarks print and record figures; they never assert on wall time. Nothing here is imported by
the service. Importing this package is cheap (no Ray, no torch) so the load-generator subprocess
starts fast.
"""
