"""Benchmarks and fault-injection runs (``python -m bench.chaos``)."""
