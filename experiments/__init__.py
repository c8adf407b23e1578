"""Experiment runners, post-run analyses and aggregation for the paper figures (docs/experiments.md)."""
