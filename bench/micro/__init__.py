"""Micro-benchmarks (pytest-benchmark): ``pytest bench/micro --benchmark-min-rounds=20``."""
