"""Benchmarks (not tests): speed figures measured in one run, reported as ratios."""
