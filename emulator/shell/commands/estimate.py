"""`precopy estimate`: predict a migration (or a drain of N guests alike) with the models; no migration."""

from __future__ import annotations

import dataclasses
import json
import math

from emulator.analysis import drain_estimate, estimate
from emulator.analysis.text import format_estimate
from emulator.core import units
from emulator.shell import readers, run_options
from emulator.shell.commands import drain as drain_command
from emulator.shell.commands.common import EXIT_OK, Option, UsageError, add_options, scenario_from_args

# the run options estimate takes, by help group
_DIRTY_KEYS = ("dirty_rate", "pattern", "hot_fraction", "hot_share", "stride", "zipf_s", "vcpus", "dirty_limit")
_DISK_KEYS = ("disk", "disk_block", "disk_write_rate", "disk_pattern")
_POLICY_KEYS = ("downtime_limit", "downtime_ramp", "max_passes", "max_time", "on_stall", "stall_passes",
                "device_state")
_UNMODELLED_KEYS = ("auto_converge", "xbzrle", "postcopy", "postcopy_after")

OPTIONS = {option.flag: option for option in (
    Option("--bandwidth", "link throughput: 1GB/s, 10Gbit/s (default %(default)s)", readers.rate, "1GB/s",
           default="1GB/s", metavar="RATE"),
    Option("--compression-ratio", "guest bytes per wire byte; R = link x C (default %(default)s: raw)",
           readers.real(lambda v: v > 0, expected="> 0"), "2.5", default="1", metavar="C"),
    # a drain: drain's own options, said as a forecast
    dataclasses.replace(drain_command.OPTIONS["--guests"], example="8",
                        help="forecast draining N such guests instead of migrating one"),
    dataclasses.replace(drain_command.OPTIONS["--max-concurrent"],
                        help="migrations at once (default %(default)s); every K up to 8 is shown too"),
    Option("--setup-time", "each migration's setup before its first page: a report's setup-time (default %(default)s)",
           readers.duration(), "100ms", default="100ms", metavar="DURATION"),
)}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "estimate", help="predict a migration's time and blackout (no migration)",
        description="Predict a migration with the rule of thumb (M / R x 1.5-3), the geometric pre-copy model "
                    "and the working-set model, under the same switch-over policy as 'migrate'. Pure computation.")
    guest = parser.add_argument_group("guest and link")
    run_options.add_options(guest, ("memory", "page_size"))
    add_options(guest, OPTIONS, "--bandwidth", "--compression-ratio")
    run_options.add_options(parser.add_argument_group("dirty behaviour"), _DIRTY_KEYS)
    run_options.add_options(parser.add_argument_group("the guest's disk (shared-nothing: mirrored alongside memory)"),
                            _DISK_KEYS)
    run_options.add_options(parser.add_argument_group("policy"), _POLICY_KEYS)
    run_options.add_options(parser.add_argument_group("strategies the models leave out (the estimate says so)"),
                            _UNMODELLED_KEYS)
    add_options(parser.add_argument_group("a drain: N guests alike, K at once, sharing --bandwidth"), OPTIONS,
                "--guests", "--max-concurrent", "--setup-time")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")


def run(args) -> int:
    scenario = scenario_from_args(args)  # the disk options without --disk are refused here
    workload, policy, disk = scenario.workload, scenario.migration.policy, scenario.disk
    if workload.unpaced:
        raise UsageError("--dirty-rate: 'max' (unpaced) has no rate to model; give one (example: --dirty-rate 50000)")
    if disk is not None and math.isinf(disk.write_rate_bytes_per_s):
        raise UsageError("--disk-write-rate: 'max' (flat out) has no rate to model; give one "
                         "(example: --disk-write-rate 20MB/s)")
    if disk is not None and args.guests is not None:
        raise UsageError("--disk/--guests: a drain forecast models memory only; give one of them")
    try:
        dirty = estimate.DirtyBehaviour.of(workload)
        inputs = estimate.EstimateInputs(
            memory_bytes=scenario.guest.memory_bytes, bandwidth_bytes_per_s=args.bandwidth, dirty=dirty,
            page_size=scenario.guest.page_size, compression_ratio=args.compression_ratio,
            device_state_bytes=scenario.migration.device_state_bytes, policy=policy,
            disk=None if disk is None else estimate.DiskInputs.of(disk),
            dirty_limit_pages_per_s=estimate.dirty_limit_of(scenario),
            unmodelled=estimate.unmodelled_strategies(scenario))
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.guests is not None:
        return _forecast_drain(inputs, args)
    result = estimate.estimate(inputs)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_estimate(result))
    return EXIT_OK


def _forecast_drain(inputs, args) -> int:
    guests = [inputs] * args.guests
    forecasts, fastest, calmest = drain_estimate.best(guests, inputs.bandwidth_bytes_per_s, args.setup_time)
    if args.max_concurrent > len(forecasts):
        forecasts.append(drain_estimate.forecast(guests, inputs.bandwidth_bytes_per_s, args.max_concurrent,
                                                 args.setup_time))
    rows = [{"max_concurrent": f.max_concurrent, "total_s": f.total_s, "worst_blackout_s": f.worst_blackout_s,
             "mean_blackout_s": sum(g.blackout_s for g in f.guests) / len(f.guests)} for f in forecasts]
    if args.json:
        print(json.dumps({"guests": args.guests, "link_bytes_per_s": inputs.bandwidth_bytes_per_s,
                          "setup_s": args.setup_time, "forecasts": rows, "shortest_drain_k": fastest,
                          "shortest_worst_blackout_k": calmest}, indent=2))
        return EXIT_OK
    print(f"drain of {args.guests} guests of {units.format_bytes(inputs.memory_bytes)} sharing "
          f"{units.format_rate(inputs.bandwidth_bytes_per_s)} (setup {units.format_duration(args.setup_time)} each)")
    print(f"{'K':>3} {'drain time':>11} {'worst blackout':>15} {'mean blackout':>14}")
    for row in rows:
        mark = "  <- --max-concurrent" if row["max_concurrent"] == args.max_concurrent else ""
        print(f"{row['max_concurrent']:>3} {units.format_duration(row['total_s']):>11} "
              f"{units.format_duration(row['worst_blackout_s']):>15} "
              f"{units.format_duration(row['mean_blackout_s']):>14}{mark}")
    print(f"shortest drain: K = {fastest}; shortest worst blackout: K = {calmest}")
    return EXIT_OK
