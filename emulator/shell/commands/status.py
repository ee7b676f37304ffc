"""`precopy status` and `set`: ask a running migrate or send where it is, or change its limits (as QEMU's
info migrate and migrate-set-parameters), over its control socket (emulator.running.control)."""

from __future__ import annotations

import json

from emulator.analysis.text import format_status
from emulator.running import control
from emulator.shell import run_options
from emulator.shell.commands.common import EXIT_OK, UsageError


def add_parser(subparsers) -> None:
    """Add status and set to `subparsers`."""
    status = subparsers.add_parser("status", help="where a running migration is (as QEMU's info migrate)",
                                   description="Ask a migrate or send running on this host, as this user, where it "
                                               "is: phase, pass, bytes moved and dirty, bandwidth, dirty rate.")
    setter = subparsers.add_parser("set", help="change a running migration's downtime limit or bandwidth cap",
                                   description="Change a running migrate or send on this host (as QEMU's "
                                               "migrate-set-parameters); the report records when.")
    for parser in (status, setter):
        parser.add_argument("--pid", type=int, metavar="PID", help="which migration, when several run")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    run_options.add_options(setter, ("downtime_limit", "max_bandwidth"), defaults=False)


def run(args) -> int:
    return {"status": _status, "set": _set}[args.command](args)


def _status(args) -> int:
    status = control.ask(_running_migration(args), {"get": "status"})
    if args.json:
        print(json.dumps(status))
        return EXIT_OK
    print(format_status(status))
    return EXIT_OK


def _set(args) -> int:
    # an option not given is absent (argparse.SUPPRESS): unlimited is None, and given
    changes = {run_options.OPTIONS[key].field: value for key, value in run_options.given(args).items()}
    if isinstance(changes.get("max_bandwidth_bytes_per_s"), run_options.LinkShare):
        raise UsageError("--max-bandwidth: set takes a rate, not a share of the link "
                         "(example: --max-bandwidth 100MB/s)")
    if not changes:
        raise UsageError("set: give --downtime-limit or --max-bandwidth (example: precopy set --downtime-limit 1s)")
    answer = control.ask(_running_migration(args), {"set": changes})
    if "error" in answer:
        raise UsageError(f"set: {answer['error']}")
    return EXIT_OK


def _running_migration(args):
    running = control.running()
    if args.pid is not None:
        if args.pid not in running:
            raise control.NotRunning(f"--pid: no migration of yours runs as process {args.pid} (running: "
                                     f"{', '.join(map(str, sorted(running))) or 'none'})")
        return running[args.pid]
    if not running:
        raise control.NotRunning("no migrate or send of yours is running on this host")
    if len(running) > 1:
        raise UsageError(f"{len(running)} migrations run (processes {', '.join(map(str, sorted(running)))}): "
                         "give --pid")
    return next(iter(running.values()))
