"""`precopy drain`: evacuate this host, migrating its guests K at once to `precopy receive --serve` ends.

Its --guests and --max-concurrent are also estimate's (a drain's forecast), told there in
estimate's words.
"""

from __future__ import annotations

import sys

from emulator.analysis.display import DrainBoard
from emulator.analysis.text import format_drain
from emulator.dataplane.transport import parse_endpoint
from emulator.running import drain
from emulator.shell import readers, run_options
from emulator.shell.commands.common import (EXIT_FOR_STATUS, Option, UsageError, add_json_quiet, add_options,
                                            check_memory_fits, check_report_path, exit_status, scenario_from_args)

OPTIONS = {option.flag: option for option in (
    Option("--to", "a receiver to drain to (repeat for several)", readers.endpoint, "tcp://10.0.0.2:4444",
           metavar="tcp://HOST:PORT", action="append", required=True),
    # which guests
    Option("--inventory", "a TOML file: [defaults] and [[guests]] tables of run options as a sweep grid spells them "
                          "(memory, dirty_rate, pattern, codec, max_bandwidth: its own cap, ...) and a name",
           metavar="FILE"),
    Option("--guests", "N guests alike, as the run options describe (each with its own seed)",
           readers.whole(1, drain.MAX_GUESTS), "4", metavar="N"),
    # the drain (K, at most as many as there may be guests)
    Option("--max-concurrent", "most migrations at once (default %(default)s, as Hyper-V)",
           readers.whole(1, drain.MAX_GUESTS), "2", default=drain.DrainOptions.max_concurrent, metavar="K"),
    Option("--order", "which queued guest goes next: as listed (default), or the largest memory first",
           default=drain.DrainOptions.order, choices=drain.ORDERS),
    Option("--placement", "which receiver takes it: the next in turn (default), or the one with the most memory "
                          "free; either way one that would host it now",
           default=drain.DrainOptions.placement, choices=drain.PLACEMENTS),
    Option("--per-migration-bandwidth", "each migration's own cap, under the shared --max-bandwidth (default none)",
           readers.rate, "100MB/s", metavar="RATE"),
    Option("--retry", "try each failed migration once more at the end", action="store_true"),
    # output
    Option("--report", "write the drain's JSON report (every guest's report, the timeline, the link's use) to FILE",
           metavar="FILE"),
)}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "drain", help="evacuate this host: migrate its guests away, at most K at once, sharing one link budget",
        description="Start the guests (an --inventory file, or --guests N alike), each in a process of its own "
                    "with its writers, and migrate them all to the receivers (--to, each a 'precopy receive "
                    "--serve'), at most --max-concurrent at once. The run options below describe every guest "
                    "(an inventory's entries override them); --max-bandwidth is the budget all migrations share, "
                    "--per-migration-bandwidth each one's own cap. A failed migration leaves its guest running "
                    "here and the drain goes on.")
    add_options(parser, OPTIONS, "--to")
    add_options(parser.add_mutually_exclusive_group(required=True), OPTIONS, "--inventory", "--guests")
    add_options(parser.add_argument_group("the drain"), OPTIONS,
                "--max-concurrent", "--order", "--placement", "--per-migration-bandwidth", "--retry")
    for title in run_options.GROUPS:
        run_options.add_options(parser.add_argument_group(f"every guest: {title}"), run_options.keys_of(title))
    output = parser.add_argument_group("output")
    add_options(output, OPTIONS, "--report")
    add_json_quiet(output, what="the drain report JSON")


def run(args) -> int:
    scenario = scenario_from_args(args, destination=parse_endpoint(args.to[0])[0].strip("[]"))
    check_report_path(args.report)
    values = {key: value for key, value in run_options.given(args).items() if key not in ("max_bandwidth", "link")}
    if args.per_migration_bandwidth is not None:
        values["max_bandwidth"] = args.per_migration_bandwidth
    try:
        guests = drain.load_inventory(args.inventory, values) if args.inventory else drain.repeated(args.guests, values)
        options = drain.DrainOptions(tuple(args.to), args.max_concurrent, args.order, args.placement,
                                     scenario.migration.max_bandwidth_bytes_per_s, args.retry)
    except ValueError as error:
        raise UsageError(f"--inventory: {error}" if args.inventory else str(error)) from None
    check_memory_fits(sum(guest.scenario.guest.memory_bytes for guest in guests), f"the {len(guests)} guests need")
    report = drain.Drain(guests, options, progress=None if args.quiet else DrainBoard()).run()
    if args.json:
        sys.stdout.write(report.to_json())
    else:
        print(format_drain(report))
    if args.report is not None:
        report.write(args.report)
    return exit_status([guest.status if guest.status in EXIT_FOR_STATUS else "cancelled" for guest in report.guests])
