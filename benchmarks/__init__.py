"""Benchmarks behind `dgan bench ...`: each prints a rich table and writes JSON."""
