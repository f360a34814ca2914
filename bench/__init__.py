"""Benchmarks, each run beside its raw baseline; results in docs/benchmarks.md."""
