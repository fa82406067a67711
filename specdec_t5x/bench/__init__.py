"""Benchmarks: one timing harness (`timing`), machine facts (`machine`), random weights
(`random_weights`), and the measurements the scripts in scripts/ run on them.

Speed is measured here, never asserted: every figure is a ratio against our own
jitted autoregressive baseline, taken in the same run with interleaved rounds.
"""
