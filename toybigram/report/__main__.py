"""python -m toybigram.report <run_dir> [--out report.html] [--no-run-reports]"""
from __future__ import annotations

if __name__ == "__main__":  # the command: set the process up before torch loads (toybigram.startup)
    from toybigram.startup import start_command

    start_command()

import argparse

from toybigram.errors import OneLineParser, UserError, exit_with
from toybigram.report.build import REPORT_FILE, write_report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m toybigram.report",
                           description="Write a self-contained HTML report of a training run or of a sweep of runs.")
    parser.add_argument("run_dir", help="a run directory, or a sweep folder of runs (0/, 1/, ... or instance0/, ...)")
    parser.add_argument("--out", help=f"the HTML file to write (default: <run_dir>/{REPORT_FILE})")
    parser.add_argument("--no-run-reports", action="store_true",
                        help="for a sweep, do not (re)write each run's own report.html")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    try:
        path = write_report(args.run_dir, args.out, run_reports=not args.no_run_reports)
    except UserError as err:
        exit_with(err)
    except OSError as err:  # a file that cannot be read, or an --out that cannot be written
        exit_with(f"{err.filename or args.out}: {err.strerror or err}")
    print(f"report: {path}")


if __name__ == "__main__":
    main()
