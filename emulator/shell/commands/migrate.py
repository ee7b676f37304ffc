"""`precopy migrate`, `send` and `check`: a source end, with the run options of emulator.shell.run_options.

migrate starts its receiver on this machine; send migrates to a `precopy receive` on
another host; check asks that receiver whether it would host the guest, migrating nothing.
With --watch, migrate and send serve a live page of the run (emulator.watch, docs/watch.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

from emulator.analysis.display import DEFAULT_INTERVAL_S, JsonStream, LiveDisplay
from emulator.analysis.text import describe_scenario, format_summary, format_verdict
from emulator.core import units
from emulator.dataplane.security import ClientSecurity, is_loopback
from emulator.dataplane.transport import parse_endpoint
from emulator.running import children, migration
from emulator.shell import run_options
from emulator.shell.commands.common import (EXIT_FAILED, EXIT_OK, EXIT_WARNING, Option, UsageError, add_json_quiet,
                                            add_options, check_disk_dir, check_memory_fits, check_report_path,
                                            exit_status, scenario_from_args)
from emulator.shell.readers import argument_type, duration, endpoint
from emulator.vm.disk import DiskSpec, free_bytes, writable_directory
from emulator.watch.session import WatchSession
from emulator.watch.tee import Tee

WATCH_HOST = "127.0.0.1"
OPTIONS = {option.flag: option for option in (
    Option("--watch", "serve a live page of the run on loopback: its URL (a random port and token) is printed on "
                      "stderr before setup; open it in a browser (docs/watch.md)", action="store_true"),
    Option("--watch-address", "with --watch (implied): serve the page on ADDR instead of 127.0.0.1; away from "
                              "loopback anyone who can reach this host and learns the URL sees it", metavar="ADDR"),
)}


def add_parser(subparsers) -> None:
    """Add migrate, send and check to `subparsers`."""
    migrate = subparsers.add_parser("migrate", help="migrate a guest between two ends on this machine",
                                    description="Migrate a guest to a receiver started on this machine "
                                                "(a child process, over TCP loopback).")
    _add_run_options(migrate)
    migrate.add_argument_group("the receiver").add_argument(
        "--disk-dir", metavar="DIR", help="where the receiver puts a mirrored disk (default: a temporary directory, "
                                          "removed after the run)")

    send = subparsers.add_parser("send", help="migrate a guest to a receiver on another host",
                                 description="Run the source end: migrate a guest to a receiver started "
                                             "elsewhere with 'precopy receive'.")
    _add_destination(send)
    _add_run_options(send)

    check = subparsers.add_parser(
        "check", help="ask a receiver whether it would host a guest, without migrating (as Compare-VM)",
        description="Ask a 'precopy receive' whether it would host the guest these options describe: it "
                    "answers with every reason it would refuse it, each with its fix. Nothing is allocated or "
                    f"moved on either end. Exit status {EXIT_OK} when compatible, {EXIT_FAILED} when not.")
    _add_destination(check)
    for title in run_options.GROUPS:
        run_options.add_options(check.add_argument_group(title), run_options.keys_of(title))
    check.add_argument("--json", action="store_true", help="print the answer as JSON (compatible, problems, busy)")


def _add_run_options(parser) -> None:
    """The options shared by `migrate` and `send` (emulator.shell.run_options), grouped as the help shows them."""
    for title in run_options.GROUPS:
        group = parser.add_argument_group(title)
        run_options.add_options(group, run_options.keys_of(title))
        if title == "disk":
            group.add_argument("--disk-path", metavar="FILE",
                               help="where the source makes the guest's disk (it must not exist; it stays after the "
                                    "run; default: a temporary file, removed after the run)")

    output = parser.add_argument_group("output")
    output.add_argument("--report", metavar="FILE", help="write the JSON report to FILE")
    add_json_quiet(output, what="the report JSON")
    output.add_argument("--fail-on-warning", action="store_true",
                        help=f"exit with status {EXIT_WARNING} when the migration completed with a warning event "
                             "(a blackout past --blackout-warning), for CI pipelines")
    output.add_argument("--json-stream", action="store_true",
                        help="print the migration as it runs as newline-delimited JSON events on stdout (start, "
                             "interval, pass, blackout, message, end) instead of the live display and summary")
    add_options(output, OPTIONS, "--watch", "--watch-address")
    output.add_argument("--interval", metavar="DURATION", default=DEFAULT_INTERVAL_S,
                        type=argument_type("--interval", "1s", duration()),
                        help="a status line this often during a pass: pages sent, rate, dirty pages, time left "
                             f"(0 = one line per pass; default {DEFAULT_INTERVAL_S:g}s)")


def _add_destination(parser) -> None:
    """Where a source goes (--to) and its CURVE keys: `send` and `check`."""
    parser.add_argument("--to", required=True, type=argument_type("--to", "tcp://10.0.0.2:4444", endpoint),
                        metavar="tcp://HOST:PORT", help="the receiver's address")
    keys = parser.add_argument_group("security (CURVE; give both or neither)")
    keys.add_argument("--key", metavar="FILE", help="this sender's secret key file (NAME.key_secret from keygen)")
    keys.add_argument("--server-key", metavar="FILE", help="the receiver's public key file (NAME.key): pinned")


def run(args) -> int:
    return {"migrate": _migrate, "send": _send, "check": _check}[args.command](args)


def _migrate(args) -> int:
    scenario = scenario_from_args(args, destination="127.0.0.1")  # the receiver listens on loopback
    check_report_path(args.report)
    check_memory_fits(2 * scenario.guest.memory_bytes,
                      "a migration on this machine holds the guest twice (source and destination):")
    _check_disk_path(args.disk_path, scenario.disk)
    check_disk_dir(args.disk_dir)
    display = _source_display(args)
    with _watch(args) as watch:
        if display is not None:
            display.banner(describe_scenario(scenario))
        report = children.migrate(scenario, progress=_heard_by(display, watch), disk_path=args.disk_path,
                                  disk_dir=args.disk_dir)
        return _finish(report, args, display, watch)


def _send(args) -> int:
    scenario = scenario_from_args(args, destination=parse_endpoint(args.to)[0].strip("[]"))
    check_report_path(args.report)
    check_memory_fits(scenario.guest.memory_bytes, "the source guest needs")
    _check_disk_path(args.disk_path, scenario.disk)
    security = _client_security(args)
    display = _source_display(args)
    with _watch(args) as watch:
        if display is not None:
            display.banner(f"sending to {args.to}{' (CURVE)' if security else ''}\n{describe_scenario(scenario)}")
        report = migration.send(scenario, args.to, progress=_heard_by(display, watch), security=security,
                                disk_path=args.disk_path)
        return _finish(report, args, display, watch)


def _check(args) -> int:
    scenario = scenario_from_args(args, destination=parse_endpoint(args.to)[0].strip("[]"))
    answer = migration.check(scenario, args.to, security=_client_security(args))
    if args.json:
        print(json.dumps({"to": args.to, "compatible": answer.compatible, **answer.to_body()}, indent=2))
    else:
        print(format_verdict(answer, args.to))
    return EXIT_OK if answer.compatible else EXIT_FAILED


def _source_display(args):
    """The source's progress: a JSON event stream, the live display with interval lines, or none."""
    if args.json_stream:
        if args.json:
            raise UsageError("--json-stream: give it or --json, not both (its end event holds the summary)")
        return JsonStream(interval_s=args.interval)
    return None if args.quiet else LiveDisplay(interval_s=args.interval)


def _watch(args):
    """A started WatchSession for --watch (or --watch-address), its URL printed on stderr; else a null context."""
    if not args.watch and args.watch_address is None:
        return contextlib.nullcontext()
    host = WATCH_HOST if args.watch_address is None else args.watch_address
    try:
        session = WatchSession(host)
    except OSError as error:
        raise UsageError(f"--watch-address: cannot serve the page at {host}: {error} (example: --watch-address "
                         "127.0.0.1)") from None
    warning = watch_address_warning(host)
    if warning:
        print(warning, file=sys.stderr)
    print(f"watch: {session.url}", file=sys.stderr, flush=True)
    return session


def watch_address_warning(host):
    """The warning for serving the page at `host`, or None on loopback."""
    if is_loopback(host):
        return None
    return (f"WARNING: --watch-address {host} is not loopback: the page (the guest's page map, rates and messages) "
            "goes over plain HTTP to anyone who can reach this host and learns the URL; the token in it is its only "
            "guard")


def _heard_by(display, watch):
    """The source's progress: the display, and the watch page's watcher when there is one."""
    return display if watch is None else Tee(display, watch.watcher)


def _finish(report, args, display, watch=None) -> int:
    if watch is not None:
        watch.finish(report.status, report.reason)
    if isinstance(display, JsonStream):
        display.end(report)
    elif args.json:
        sys.stdout.write(report.to_json())
    else:
        print(format_summary(report))
    sys.stdout.flush()
    if args.report is not None:
        report.write(args.report)
    if args.fail_on_warning and report.status == "completed" and report.events:
        return EXIT_WARNING
    return exit_status([report.status])


def _check_disk_path(path, disk) -> None:
    """Refuse a --disk-path the guest's disk cannot be made at, before anything is filled."""
    if path is None:
        return
    if disk is None:
        raise UsageError("--disk-path: the guest has no disk; give it one with --disk SIZE")
    if os.path.lexists(path):
        raise UsageError(f"--disk-path: {path} exists; precopy makes the guest's disk and never overwrites a file "
                         "(remove it, or give another path)")
    directory = os.path.dirname(os.path.abspath(path))
    if not writable_directory(directory):
        raise UsageError(f"--disk-path: {path} cannot be created: {directory} is not a writable directory")
    free = free_bytes(directory)
    if disk.size_bytes > free:
        raise UsageError(f"--disk-path: the {units.format_bytes(disk.size_bytes)} disk does not fit in {directory} "
                         f"({units.format_bytes(free)} free)")
    name = os.path.basename(path)
    try:
        DiskSpec.RULES["name"](name)
    except ValueError as error:
        raise UsageError(f"--disk-path: the file's name is the disk's name on the destination, and it {error}") \
            from None


def _client_security(args):
    if (args.key is None) != (args.server_key is None):
        raise UsageError("--key and --server-key go together (example: --key src.key_secret --server-key dst.key)")
    if args.key is None:
        return None
    try:
        return ClientSecurity.from_files(args.key, args.server_key)
    except ValueError as error:
        raise UsageError(f"--key/--server-key: {error}") from None
