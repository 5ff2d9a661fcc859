"""Benchmarks of the inference function: `python -m benchmarks.run` prints the tables and writes results/latest.md."""
