"""`precopy receive`: the destination end, waiting for `precopy send` (one migration, or with --serve many)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from emulator.analysis.display import LiveDisplay
from emulator.core.units import format_bytes
from emulator.dataplane.security import ServerSecurity
from emulator.destination.receiver import DestinationLimits
from emulator.running import migration
from emulator.shell import readers
from emulator.shell.commands.common import (EXIT_OK, Option, UsageError, add_json_quiet, add_options, check_disk_dir,
                                            exit_status)
from emulator.vm.scenario import GuestConfig, MigrationOptions

# The limits' defaults are DestinationLimits'; the timeout is a source's default --timeout: each end waits as long.
TIMEOUT_S = MigrationOptions.timeout_s

OPTIONS = {option.flag: option for option in (
    Option("--listen", "address to listen on", readers.endpoint, "tcp://0.0.0.0:4444", metavar="tcp://ADDR:PORT",
           required=True),
    Option("--capacity", "largest guest memory this end accepts (default: this host's available memory)",
           readers.size(minimum=1), "8GiB", metavar="SIZE"),
    # limits
    Option("--max-vcpus", "most vCPUs (writer threads) of a guest (default %(default)s)", readers.whole(1), "64",
           default=DestinationLimits.max_vcpus, metavar="N"),
    Option("--max-channels", "most data channels of a migration (default %(default)s)", readers.whole(1), "16",
           default=DestinationLimits.max_channels, metavar="N"),
    Option("--max-device-state",
           f"largest vCPU/device state (default {format_bytes(DestinationLimits.max_device_state_bytes)})",
           readers.size(minimum=1), "16MiB", default=DestinationLimits.max_device_state_bytes, metavar="SIZE"),
    Option("--max-message", "largest data message, batch pages x page size "
                            f"(default {format_bytes(DestinationLimits.max_message_bytes)})",
           readers.size(minimum=1), "64MiB", default=DestinationLimits.max_message_bytes, metavar="SIZE"),
    Option("--max-duration", f"longest a migration may last from HELLO (default {DestinationLimits.max_duration_s:g}s)",
           readers.duration(positive=True), "1h", default=DestinationLimits.max_duration_s, metavar="DURATION"),
    # what this destination offers a guest's configuration
    Option("--switch", "a virtual switch guests' network adapters may connect to (repeatable; default none)",
           readers.rule(lambda name: (name,), GuestConfig.RULES["switches"]), "External", default=[], metavar="NAME",
           action="append"),
    Option("--disk-dir", "take mirrored guest disks (--storage mirror) into DIR: each as NAME.part until verified, "
                         "then NAME, never over a file (default: none taken, a mirror is refused: a source may fill "
                         "what it is given)", metavar="DIR"),
    Option("--config-version", "the newest guest configuration version supported (default %(default)s)",
           readers.rule(readers.whole_number, GuestConfig.RULES["version"]), "1",
           default=DestinationLimits.config_version, metavar="N"),
    # one migration or many
    Option("--serve", "keep accepting migrations, whatever became of the last, until interrupted",
           action="store_true"),
    Option("--max-incoming", "with --serve: most migrations hosted at once, sharing --capacity; a source beyond is "
                             "refused as busy (default %(default)s)", readers.whole(1), "2", default=1, metavar="N"),
    Option("--wait", "how long to wait for a source to begin (default: until interrupted)",
           readers.duration(optional=True, positive=True), "5min", metavar="DURATION"),
    Option("--timeout", f"longest silence from a source mid-migration (default {TIMEOUT_S:g}s)",
           readers.duration(positive=True), "10s", default=TIMEOUT_S, metavar="DURATION"),
    # security
    Option("--key", "this receiver's secret key file (NAME.key_secret from keygen)", metavar="FILE"),
    Option("--allow", "a sender public key file (NAME.key) to accept; repeat for several senders", default=[],
           metavar="FILE", action="append"),
    Option("--insecure", "without keys, listen on a non-loopback address anyway (anyone who can reach it can push "
                         "memory into this host)", action="store_true"),
)}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("receive", help="run the destination end and wait for a sender",
                                   description="Run the destination end: accept one migration (or, with --serve, "
                                               "one after another) from 'precopy send'.")
    add_options(parser, OPTIONS, "--listen", "--capacity")
    add_options(parser.add_argument_group("limits: a source asking for more is refused, with the limit"), OPTIONS,
                "--max-vcpus", "--max-channels", "--max-device-state", "--max-message", "--max-duration")
    add_options(parser.add_argument_group("what this destination offers a guest's configuration"), OPTIONS,
                "--switch", "--disk-dir", "--config-version")
    once = parser.add_mutually_exclusive_group()
    add_options(once, OPTIONS, "--serve")
    add_options(parser, OPTIONS, "--max-incoming")
    add_options(once, OPTIONS, "--wait")
    add_options(parser, OPTIONS, "--timeout")
    add_options(parser.add_argument_group("security (CURVE)"), OPTIONS, "--key", "--allow", "--insecure")
    add_json_quiet(parser.add_argument_group("output"), what="each migration's outcome as a JSON line")


def run(args) -> int:
    if args.max_incoming != 1 and not args.serve:
        raise UsageError("--max-incoming: a single receive hosts one migration; give --serve too "
                         "(example: --serve --max-incoming 2)")
    check_disk_dir(args.disk_dir)
    security = _server_security(args)
    display = None if args.quiet else LiveDisplay()

    def on_outcome(outcome):
        _print_outcome(outcome, args.json)

    listening = []

    def on_ready(endpoint):
        listening.append(endpoint)
        if display is None:  # the display says it otherwise; with --quiet, scripts still need the port
            print(f"precopy: listening on {endpoint}" + (" (CURVE)" if security else ""), file=sys.stderr, flush=True)

    try:
        limits = DestinationLimits(max_vcpus=args.max_vcpus, max_channels=args.max_channels,
                                   max_device_state_bytes=args.max_device_state, max_message_bytes=args.max_message,
                                   max_duration_s=args.max_duration, switches=tuple(name for (name,) in args.switch),
                                   config_version=args.config_version, disk_dir=args.disk_dir)
        last = migration.receive(args.listen, capacity_bytes=args.capacity, limits=limits, serve=args.serve,
                                 max_incoming=args.max_incoming, progress=display, timeout_s=args.timeout,
                                 wait_s=args.wait, security=security, insecure=args.insecure, on_outcome=on_outcome,
                                 ready=on_ready)
    except ValueError as error:
        if listening:  # past setup: not a problem with --listen
            raise
        raise UsageError(f"--listen: {error} (--key FILE --allow FILE, or --insecure)") from None
    return EXIT_OK if last is None else exit_status([last.status])  # None: stopped between migrations


def _server_security(args):
    if args.key is None:
        if args.allow:
            raise UsageError("--allow needs --key, this receiver's own secret key (example: --key dst.key_secret)")
        return None
    try:
        return ServerSecurity.from_files(args.key, args.allow)
    except ValueError as error:
        raise UsageError(f"--key/--allow: {error}") from None


def _print_outcome(outcome, as_json) -> None:
    if as_json:
        print(json.dumps(asdict(outcome)), flush=True)
        return
    for key, value in asdict(outcome).items():
        if value is not None:
            print(f"{key:<15} {value}")
    print(flush=True)
