"""Benchmarks: timing, accuracy, machine info and reports for exported bundles and checkpoints.

``run_bench(...)`` lives in ``apd_edge.bench.run``; importing this package imports nothing heavy.
"""
