"""Paper figures: sweeps of the experiment configs, post-run analyses, tables and plots (docs/experiments.md)."""
