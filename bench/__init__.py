"""Benchmarks for podshark: `python -m bench [names...]` runs them and updates BENCHMARKS.md."""
