"""`precopy sweep`: run a grid of migrations (emulator.analysis.sweep) and set each beside the models' predictions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emulator.analysis import sweep
from emulator.analysis.display import SweepProgress
from emulator.running import children
from emulator.running.drain import DrainOptions
from emulator.shell import run_options
from emulator.shell.commands.common import EXIT_OK, UsageError, exit_status
from emulator.shell.readers import argument_type, lambdas, whole, whole_list


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="run a grid of migrations and measure them against the models",
        description="Run every migration of a grid (a TOML file, or lists on the command line; the command line "
                    "overrides the file), write each JSON report, a CSV with one row per run and a summary of "
                    "how well each model did.")
    parser.add_argument("grid", nargs="?", metavar="GRID.toml", help="grid file (see bench/sweep.toml)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the reports, sweep.csv and summary.txt go")
    axes = parser.add_argument_group("axes: any run option of 'precopy migrate', as a comma-separated list")
    axes.add_argument("--lambda", type=argument_type("--lambda", "0,0.3,0.6,0.9 or 0:0.9:0.3", lambdas),
                      default=argparse.SUPPRESS, metavar="LIST",
                      help="dirty rate as a share of --max-bandwidth, instead of --dirty-rate: 0,0.3,0.6 or 0:0.9:0.3")
    axes.add_argument("--repeats", type=argument_type("--repeats", "3", whole(1)), default=argparse.SUPPRESS,
                      metavar="N", help="runs per grid point, seeds SEED, SEED+1, ... (default 1)")
    axes.add_argument("--guests", type=argument_type("--guests", "2,4,8", whole_list(1)), default=argparse.SUPPRESS,
                      metavar="LIST", help="make each run a drain of that many guests alike, to a serving receiver "
                                           "on this machine, sharing --max-bandwidth: 2,4,8")
    axes.add_argument("--max-concurrent", type=argument_type("--max-concurrent", "1,2,4", whole_list(1)),
                      default=argparse.SUPPRESS, metavar="LIST",
                      help=f"a drain's migrations at once, K (default {DrainOptions.max_concurrent}): 1,2,4")
    run_options.add_axes(axes)
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args) -> int:
    overrides = {key: value for key, value in vars(args).items() if key in sweep.KEYS}
    if "lambda" in overrides and "dirty_rate" in overrides:
        raise UsageError("--lambda/--dirty-rate: give one of them, not both")
    try:
        if args.grid is not None:
            grids = sweep.load_grid(args.grid)
        elif overrides:
            grids = [{}]
        else:
            raise UsageError("sweep: give a grid file or some axes "
                             "(example: precopy sweep bench/sweep.toml --out runs)")
        if "lambda" in overrides or "dirty_rate" in overrides:
            for grid in grids:  # the command line's load replaces the file's, whichever way it was given
                grid.pop("lambda", None)
                grid.pop("dirty_rate", None)
        runs = sweep.expand([{**grid, **overrides} for grid in grids], where=args.grid or "command line")
    except (ValueError, OSError) as error:
        raise UsageError(str(error)) from None
    if args.dry_run:
        for point in runs:
            print(f"{point.index:>4} {point.describe()}")
        return EXIT_OK
    out = Path(args.out)
    progress = None if args.quiet or not sys.stderr.isatty() else SweepProgress(sys.stderr)
    rows = sweep.run_sweep(runs, out, migrate=children.migrate, progress=progress)
    print(sweep.summary_text(rows), end="")
    print(f"\nwrote {out / 'sweep.csv'}, {out / 'summary.txt'} and {len(rows)} reports in {out / 'reports'}")
    return exit_status(row["status"] for row in rows)
