"""Rebuild the tables of figures from the run directories already on disk (no training, no analysis).

    python experiments/aggregate.py fig1 --profile quick      # or: all

How runs are read and sorted (usable, failed, diverged, mismatch, ...): experiments/runs.py. A
figure with problems keeps its previous tables (``--allow-missing``: built from the usable runs
as long as every point has at least one seed).
"""
from __future__ import annotations

import sys
from pathlib import Path

from experiments.figure import DATA_DIR, figure_tables, registry
from experiments.sweeps import PROFILES, Setup
from experiments.tables import write_table
from toybigram.errors import OneLineParser, UserError


def main(argv=None) -> int:
    """Write each figure's tables from its runs; a figure with problems is named on stderr and keeps its tables."""
    figures = {key: fig for key, fig in registry().items() if fig.from_sweeps}
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("figure", choices=[*figures, "all"])
    parser.add_argument("--profile", default="quick", choices=PROFILES)
    parser.add_argument("--override", action="append", default=[], help="the extra overrides the sweeps ran with")
    parser.add_argument("--allow-missing", action="store_true", help="build from the usable runs if every point has one")
    parser.add_argument("--sweeps-dir", type=Path, help="the sweeps are in DIR/<sweep>/")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where the tables go")
    args = parser.parse_args(argv)
    setup = Setup(args.profile, tuple(args.override), args.sweeps_dir)
    status = 0
    for key in list(figures) if args.figure == "all" else [args.figure]:
        try:
            tables, _ = figure_tables(figures[key], setup, args.allow_missing)
        except UserError as err:
            print(f"error: {key}: {err}", file=sys.stderr)
            status = 2
            continue
        paths = [write_table(args.data_dir / f"{table}.csv", rows) for table, rows in tables.items()]
        print(f"{key}: wrote {', '.join(str(p) for p in paths)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
