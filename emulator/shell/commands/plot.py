"""`precopy plot`: PNG figures from reports and sweeps (emulator.analysis.plot, with matplotlib)."""

from __future__ import annotations

from pathlib import Path

from emulator.shell.commands.common import EXIT_OK, UsageError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot", help="draw PNG figures from reports or a sweep",
        description="Draw a PNG per input: a report (.json) shows bytes per pass against each model, remaining "
                    "dirty bytes against the switch-over threshold, and the timeline with the blackout; a sweep "
                    "(.csv) shows the measured overhead factor against lambda with the 1.5-3x band and the models.")
    parser.add_argument("inputs", nargs="+", metavar="FILE", help="report .json or sweep .csv")
    parser.add_argument("--out", metavar="DIR", help="where the PNGs go (default: beside each input, same name)")


def run(args) -> int:
    from emulator.analysis.plot import plot_file  # here: matplotlib takes 0.3 s to load, which no other command needs

    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out: {args.out!r} is a file, not a directory (example: --out bench/results)")
    for name in args.inputs:
        if not Path(name).is_file():
            raise UsageError(f"plot: no such file {name!r}")
    if args.out is not None:
        Path(args.out).mkdir(parents=True, exist_ok=True)  # as sweep --out does
    for name in args.inputs:
        print(plot_file(name, args.out))
    return EXIT_OK
