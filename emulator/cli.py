"""The `precopy` command line: parses arguments, builds a Scenario, calls the engine, prints.

    precopy migrate [options]                     both ends on this machine
    precopy send --to tcp://HOST:PORT [options]   source end; the receiver runs elsewhere
    precopy receive --listen tcp://ADDR:PORT      destination end

Exit statuses: EXIT_MEANINGS below, which --help lists (the README's table). Bad usage is
one line ``precopy: error: ...`` naming the option. ``precopy`` with no subcommand prints
the help and exits 0: asking for orientation is not an error. ``--debug`` shows tracebacks
instead of one-line errors.

Sizes, rates and durations are read by emulator.units (see its docstring for the units).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import math
import os
import re
import signal
import sys
import threading
import traceback
from dataclasses import asdict
from pathlib import Path

from emulator import link_speed, run_options, units
from emulator.display import (DEFAULT_INTERVAL_S, DrainBoard, JsonStream, LiveDisplay, SweepProgress,
                              describe_scenario, format_status, format_verdict)
from emulator.protocol import VERSION as PROTOCOL_VERSION
from emulator.disk import DiskSpec, free_bytes, writable_directory
from emulator.receiver import DestinationLimits
from emulator.scenario import CONFIG_VERSION, GuestConfig
from emulator.transport import parse_endpoint

EXIT_OK = 0  # the exit statuses, as the README's table gives them
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WARNING = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
EXIT_MEANINGS = {  # as --help says them
    EXIT_OK: "completed, or a serving receiver stopped between migrations",
    EXIT_FAILED: "failed (or the guest was lost in post-copy), check's destination would refuse the guest, status "
                 "or set found no migration, or a runtime error",
    EXIT_USAGE: "bad usage: nothing was started",
    EXIT_WARNING: "completed with a warning event, under --fail-on-warning",
    EXIT_INTERRUPTED: "cancelled: Ctrl-C or SIGTERM",
}
_EXIT_FOR_STATUS = {"completed": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_INTERRUPTED, "lost": EXIT_FAILED}


def exit_status(statuses):
    """The exit status for migrations that ended with `statuses`: any cancelled, else any failed, else 0."""
    codes = {_EXIT_FOR_STATUS[status] for status in statuses}
    return EXIT_INTERRUPTED if EXIT_INTERRUPTED in codes else max(codes, default=EXIT_OK)



class UsageError(Exception):
    """Bad command-line input; the message names the option."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting, takes "-1GiB" as a value and
    says when a unit was typed apart from its number."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse reads a word that starts with "-" as an option unless it is a bare negative number, so
        # "--memory -1GiB" would say "expected one argument"; a "-" then a digit is a value here, which the
        # option's reader refuses by name ("must not be negative"). No option of ours starts "-<digit>".
        self._negative_number_matcher = re.compile(r"-\.?\d")

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(_unit_apart(args, extras) or f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def error(self, message):
        # argparse says "argument --memory: ..."; we say "--memory: ...".
        if message.startswith("argument "):
            message = message[len("argument "):]
        raise UsageError(message)


def _unit_apart(argv, extras):
    """The error for "--memory 1 GiB" (a unit left over, after an option's number), or None."""
    for option, number, word in zip(argv, argv[1:], argv[2:]):
        if word in extras and option.startswith("--") and word[:1].isalpha() and _reads_with_a_unit(number + word):
            return f"{option}: write the unit right after the number, without a space: {option} {number}{word}"
    return None


def _reads_with_a_unit(text):
    """True if `text` is a size, a duration or a rate (a dirty rate's units include a bandwidth's)."""
    for read in (units.parse_size, units.parse_duration, lambda rate: units.parse_dirty_rate(rate, page_size=4096)):
        try:
            read(text)
        except ValueError:
            continue
        return True
    return False


# argument types: each names its option and gives an example when it refuses a value ------
def _refuse(option, problem, example):
    return argparse.ArgumentTypeError(f"{problem} (example: {option} {example})")


def _size_type(option, example, *, minimum=0, maximum=None):
    def parse(text):
        try:
            value = units.parse_size(text)
        except ValueError as error:
            raise _refuse(option, error, example) from None
        if value < minimum:
            raise _refuse(option, f"must be at least {units.format_bytes(minimum)}, got {text!r}", example)
        if maximum is not None and value > maximum:
            raise _refuse(option, f"must be at most {units.format_bytes(maximum)}, got {text!r}", example)
        return value

    return parse


def _int_type(option, example, *, minimum, maximum=None):
    def parse(text):
        try:
            value = int(text, 10)
        except ValueError:
            raise _refuse(option, f"invalid whole number {text!r}", example) from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise _refuse(option, f"must be a whole number {bound}, got {text!r}", example)
        return value

    return parse


def _rule_type(option, example, read, rule):
    """`rule(read(text))`: a value a dataclass's rule (emulator.fields) holds, refused naming the option."""
    def parse(text):
        try:
            return rule(read(text))
        except ValueError as error:
            raise _refuse(option, error, example) from None

    return parse


def _float_type(option, example, *, check, expected):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise _refuse(option, f"invalid number {text!r}", example) from None
        if not math.isfinite(value) or not check(value):
            raise _refuse(option, f"must be {expected}, got {text!r}", example)
        return value

    return parse


def _duration_type(option, example, *, default_unit="s", optional=False, positive=False):
    def parse(text):
        if optional and units.means_no_limit(text):
            return None
        try:
            value = units.parse_duration(text, default_unit)
        except ValueError as error:
            raise _refuse(option, error, example) from None
        if not math.isfinite(value) or (positive and value <= 0):
            raise _refuse(option, f"must be a finite duration{' > 0' if positive else ''}, got {text!r}", example)
        return value

    return parse


def _endpoint_type(option, example):
    def parse(text):
        scheme, sep, rest = text.partition("://")
        host, colon, port = rest.rpartition(":")
        if scheme != "tcp" or not sep or not colon or not host or not port.isdigit() or int(port) > 65535:
            raise _refuse(option, f"invalid address {text!r}: expected tcp://HOST:PORT", example)
        return text

    return parse


def _rate_type(option, example):
    """A bandwidth (bytes/s) that must be a number: 'unlimited' is refused."""
    def parse(text):
        try:
            value = units.parse_bandwidth(text)
        except ValueError as error:
            raise _refuse(option, error, example) from None
        if value is None:
            raise _refuse(option, f"needs a rate, got {text!r}", example)
        return value

    return parse


def _int_list_type(option, example):
    """Whole numbers >= 1, comma-separated."""
    parse_one = _int_type(option, example, minimum=1)

    def parse(text):
        return [parse_one(item.strip()) for item in text.split(",")]

    return parse


def _lambda_list_type(text):
    """lambda values: a list (0,0.3,0.6) or a range START:STOP:STEP (stop included)."""
    example = "0,0.3,0.6,0.9 or 0:0.9:0.3"
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if not step > 0 or stop < start:
                raise ValueError(f"a range needs STEP > 0 and STOP >= START, got {text!r}")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 9) for i in range(count)]
        else:
            values = [float(item) for item in text.split(",")]
    except ValueError as error:
        raise _refuse("--lambda", f"invalid lambda {text!r} ({error})", example) from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise _refuse("--lambda", f"every lambda must be a number >= 0, got {text!r}", example)
    return values


# the parser ------------------------------------------------------------------------------
def _add_debug(parser, default):
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks on errors")


def _add_run_options(parser):
    """The options shared by `migrate` and `send` (emulator.run_options), grouped as the help shows them."""
    for title in run_options.GROUPS:
        group = parser.add_argument_group(title)
        run_options.add_options(group, run_options.keys_of(title))
        if title == "disk":
            group.add_argument("--disk-path", metavar="FILE",
                               help="where the source makes the guest's disk (it must not exist; it stays after the "
                                    "run; default: a temporary file, removed after the run)")

    output = parser.add_argument_group("output")
    output.add_argument("--report", metavar="FILE", help="write the JSON report to FILE")
    _add_json_quiet(output, what="the report JSON")
    output.add_argument("--fail-on-warning", action="store_true",
                        help=f"exit with status {EXIT_WARNING} when the migration completed with a warning event "
                             "(a blackout past --blackout-warning), for CI pipelines")
    output.add_argument("--json-stream", action="store_true",
                        help="print the migration as it runs as newline-delimited JSON events on stdout (start, "
                             "interval, pass, blackout, message, end) instead of the live display and summary")
    output.add_argument("--interval", metavar="DURATION", default=DEFAULT_INTERVAL_S,
                        type=_duration_type("--interval", "1s"),
                        help="a status line this often during a pass: pages sent, rate, dirty pages, time left "
                             f"(0 = one line per pass; default {DEFAULT_INTERVAL_S:g}s)")


def _add_destination(parser):
    """Where a source goes (--to) and its CURVE keys: `send` and `check`."""
    parser.add_argument("--to", required=True, type=_endpoint_type("--to", "tcp://10.0.0.2:4444"),
                        metavar="tcp://HOST:PORT", help="the receiver's address")
    keys = parser.add_argument_group("security (CURVE; give both or neither)")
    keys.add_argument("--key", metavar="FILE", help="this sender's secret key file (NAME.key_secret from keygen)")
    keys.add_argument("--server-key", metavar="FILE", help="the receiver's public key file (NAME.key): pinned")


def _add_json_quiet(group, what):
    group.add_argument("--json", action="store_true", help=f"print {what} to stdout instead of the summary")
    group.add_argument("--quiet", action="store_true", help="no live display (the result is still printed)")


def build_parser():
    """The argparse parser of `precopy` and its subcommands."""
    parser = _Parser(prog="precopy", description="Emulate live-migration memory pre-copy: a guest's memory is "
                     "streamed from a sender to a receiver over ZeroMQ while writer threads dirty it.",
                     epilog="Run 'precopy COMMAND --help' for a command's options. Exit status: "
                            + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_MEANINGS.items()) + ".")
    _add_debug(parser, default=False)
    parser.add_argument("--version", action="version",
                        version=f"precopy {importlib.metadata.version('precopy')} (wire protocol {PROTOCOL_VERSION})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    migrate = commands.add_parser("migrate", help="migrate a guest between two ends on this machine",
                                  description="Migrate a guest to a receiver started on this machine "
                                              "(a child process, over TCP loopback).")
    _add_run_options(migrate)
    migrate.add_argument_group("the receiver").add_argument(
        "--disk-dir", metavar="DIR", help="where the receiver puts a mirrored disk (default: a temporary directory, "
                                          "removed after the run)")

    send = commands.add_parser("send", help="migrate a guest to a receiver on another host",
                               description="Run the source end: migrate a guest to a receiver started "
                                           "elsewhere with 'precopy receive'.")
    _add_destination(send)
    _add_run_options(send)

    check = commands.add_parser(
        "check", help="ask a receiver whether it would host a guest, without migrating (as Compare-VM)",
        description="Ask a 'precopy receive' whether it would host the guest these options describe: it "
                    "answers with every reason it would refuse it, each with its fix. Nothing is allocated or "
                    f"moved on either end. Exit status {EXIT_OK} when compatible, {EXIT_FAILED} when not.")
    _add_destination(check)
    for title in run_options.GROUPS:
        run_options.add_options(check.add_argument_group(title), run_options.keys_of(title))
    check.add_argument("--json", action="store_true", help="print the answer as JSON (compatible, problems, busy)")

    receive = commands.add_parser("receive", help="run the destination end and wait for a sender",
                                  description="Run the destination end: accept one migration (or, with --serve, "
                                              "one after another) from 'precopy send'.")
    receive.add_argument("--listen", required=True, type=_endpoint_type("--listen", "tcp://0.0.0.0:4444"),
                         metavar="tcp://ADDR:PORT", help="address to listen on")
    receive.add_argument("--capacity", type=_size_type("--capacity", "8GiB", minimum=1), default=None,
                         metavar="SIZE", help="largest guest memory this end accepts (default: this host's available memory)")
    limits = receive.add_argument_group("limits: a source asking for more is refused, with the limit")
    defaults = DestinationLimits()
    limits.add_argument("--max-vcpus", type=_int_type("--max-vcpus", "64", minimum=1), default=defaults.max_vcpus,
                        metavar="N", help=f"most vCPUs (writer threads) of a guest (default {defaults.max_vcpus})")
    limits.add_argument("--max-channels", type=_int_type("--max-channels", "16", minimum=1),
                        default=defaults.max_channels, metavar="N",
                        help=f"most data channels of a migration (default {defaults.max_channels})")
    limits.add_argument("--max-device-state", type=_size_type("--max-device-state", "16MiB", minimum=1),
                        default=defaults.max_device_state_bytes, metavar="SIZE",
                        help=f"largest vCPU/device state (default {units.format_bytes(defaults.max_device_state_bytes)})")
    limits.add_argument("--max-message", type=_size_type("--max-message", "64MiB", minimum=1),
                        default=defaults.max_message_bytes, metavar="SIZE",
                        help="largest data message, batch pages x page size "
                             f"(default {units.format_bytes(defaults.max_message_bytes)})")
    limits.add_argument("--max-duration", type=_duration_type("--max-duration", "1h", positive=True),
                        default=defaults.max_duration_s, metavar="DURATION",
                        help=f"longest a migration may last from HELLO (default {defaults.max_duration_s:g}s)")
    offers = receive.add_argument_group("what this destination offers a guest's configuration")
    offers.add_argument("--switch", metavar="NAME", action="append", default=[],
                        type=_rule_type("--switch", "External", lambda name: (name,), GuestConfig.RULES["switches"]),
                        help="a virtual switch guests' network adapters may connect to (repeatable; default none)")
    offers.add_argument("--disk-dir", metavar="DIR",
                        help="take mirrored guest disks (--storage mirror) into DIR: each as NAME.part until verified, "
                             "then NAME, never over a file (default: none taken, a mirror is refused: a source may "
                             "fill what it is given)")
    offers.add_argument("--config-version", type=_rule_type("--config-version", "1", run_options.whole_number,
                                                            GuestConfig.RULES["version"]),
                        default=CONFIG_VERSION, metavar="N",
                        help=f"the newest guest configuration version supported (default {CONFIG_VERSION})")
    once = receive.add_mutually_exclusive_group()
    once.add_argument("--serve", action="store_true",
                      help="keep accepting migrations, whatever became of the last, until interrupted")
    receive.add_argument("--max-incoming", type=_int_type("--max-incoming", "2", minimum=1), default=1, metavar="N",
                         help="with --serve: most migrations hosted at once, sharing --capacity; a source beyond "
                              "is refused as busy (default 1)")
    once.add_argument("--wait", type=_duration_type("--wait", "5min", optional=True, positive=True), default=None,
                      metavar="DURATION", help="how long to wait for a source to begin (default: until interrupted)")
    receive.add_argument("--timeout", type=_duration_type("--timeout", "10s", positive=True), default=10.0,
                         metavar="DURATION", help="longest silence from a source mid-migration (default 10s)")
    keys = receive.add_argument_group("security (CURVE)")
    keys.add_argument("--key", metavar="FILE", help="this receiver's secret key file (NAME.key_secret from keygen)")
    keys.add_argument("--allow", metavar="FILE", action="append", default=[],
                      help="a sender public key file (NAME.key) to accept; repeat for several senders")
    keys.add_argument("--insecure", action="store_true",
                      help="without keys, listen on a non-loopback address anyway (anyone who can reach it can "
                           "push memory into this host)")
    _add_json_quiet(receive.add_argument_group("output"), what="each migration's outcome as a JSON line")

    keygen = commands.add_parser("keygen", help="write a CURVE key pair for send/receive",
                                 description="Write NAME.key (public: give it to the other end) and "
                                             "NAME.key_secret (keep it here) into --dir.")
    keygen.add_argument("name", help="name of the key pair, e.g. the host name")
    keygen.add_argument("--dir", default=".", metavar="DIR", help="where to write the files (default .)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key pair of that name")

    status = commands.add_parser("status", help="where a running migration is (as QEMU's info migrate)",
                                 description="Ask a migrate or send running on this host, as this user, where it "
                                             "is: phase, pass, bytes moved and dirty, bandwidth, dirty rate.")
    setter = commands.add_parser("set", help="change a running migration's downtime limit or bandwidth cap",
                                 description="Change a running migrate or send on this host (as QEMU's "
                                             "migrate-set-parameters); the report records when.")
    for sub in (status, setter):
        sub.add_argument("--pid", type=int, metavar="PID", help="which migration, when several run")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    run_options.add_options(setter, ("downtime_limit", "max_bandwidth"), defaults=False)

    drain = _add_drain(commands)
    analysis = _add_analysis_commands(commands)

    for sub in (migrate, send, check, drain, receive, keygen, status, setter, *analysis):
        # SUPPRESS: a subcommand's default must not undo a --debug given before it.
        _add_debug(sub, default=argparse.SUPPRESS)
    return parser


def _add_drain(commands):
    from emulator.drain import ORDERS, PLACEMENTS

    drain = commands.add_parser(
        "drain", help="evacuate this host: migrate its guests away, at most K at once, sharing one link budget",
        description="Start the guests (an --inventory file, or --guests N alike), each in a process of its own "
                    "with its writers, and migrate them all to the receivers (--to, each a 'precopy receive "
                    "--serve'), at most --max-concurrent at once. The run options below describe every guest "
                    "(an inventory's entries override them); --max-bandwidth is the budget all migrations share, "
                    "--per-migration-bandwidth each one's own cap. A failed migration leaves its guest running "
                    "here and the drain goes on.")
    drain.add_argument("--to", action="append", required=True, type=_endpoint_type("--to", "tcp://10.0.0.2:4444"),
                       metavar="tcp://HOST:PORT", help="a receiver to drain to (repeat for several)")
    which = drain.add_mutually_exclusive_group(required=True)
    which.add_argument("--inventory", metavar="FILE",
                       help="a TOML file: [defaults] and [[guests]] tables of run options as a sweep grid spells "
                            "them (memory, dirty_rate, pattern, codec, max_bandwidth: its own cap, ...) and a name")
    which.add_argument("--guests", type=_int_type("--guests", "4", minimum=1, maximum=256), metavar="N",
                       help="N guests alike, as the run options describe (each with its own seed)")
    plan = drain.add_argument_group("the drain")
    plan.add_argument("--max-concurrent", type=_int_type("--max-concurrent", "2", minimum=1, maximum=256), default=2,
                      metavar="K", help="most migrations at once (default 2, as Hyper-V)")
    plan.add_argument("--order", choices=ORDERS, default="listed",
                      help="which queued guest goes next: as listed (default), or the largest memory first")
    plan.add_argument("--placement", choices=PLACEMENTS, default="round-robin",
                      help="which receiver takes it: the next in turn (default), or the one with the most memory "
                           "free; either way one that would host it now")
    plan.add_argument("--per-migration-bandwidth", metavar="RATE", type=_rate_type("--per-migration-bandwidth",
                                                                                    "100MB/s"),
                      help="each migration's own cap, under the shared --max-bandwidth (default none)")
    plan.add_argument("--retry", action="store_true", help="try each failed migration once more at the end")
    for title in run_options.GROUPS:
        run_options.add_options(drain.add_argument_group(f"every guest: {title}"), run_options.keys_of(title))
    output = drain.add_argument_group("output")
    output.add_argument("--report", metavar="FILE", help="write the drain's JSON report (every guest's report, "
                                                         "the timeline, the link's use) to FILE")
    _add_json_quiet(output, what="the drain report JSON")
    return drain


def _add_analysis_commands(commands):
    """`estimate`, `sweep` and `plot`: the models, measured grids, figures."""
    estimate = commands.add_parser(
        "estimate", help="predict a migration's time and blackout (no migration)",
        description="Predict a migration with the rule of thumb (M / R x 1.5-3), the geometric pre-copy model "
                    "and the working-set model, under the same switch-over policy as 'migrate'. Pure computation.")
    guest = estimate.add_argument_group("guest and link")
    run_options.add_options(guest, ("memory", "page_size"))
    guest.add_argument("--bandwidth", type=_rate_type("--bandwidth", "1GB/s"), default=1e9, metavar="RATE",
                       help="link throughput: 1GB/s, 10Gbit/s (default 1GB/s)")
    guest.add_argument("--compression-ratio", default=1.0, metavar="C",
                       type=_float_type("--compression-ratio", "2.5", check=lambda v: v > 0, expected="> 0"),
                       help="guest bytes per wire byte; R = link x C (default 1: raw)")
    run_options.add_options(estimate.add_argument_group("dirty behaviour"), _ESTIMATE_DIRTY_KEYS)
    run_options.add_options(estimate.add_argument_group("the guest's disk (shared-nothing: mirrored alongside memory)"),
                            _ESTIMATE_DISK_KEYS)
    run_options.add_options(estimate.add_argument_group("policy"), _ESTIMATE_POLICY_KEYS)
    run_options.add_options(estimate.add_argument_group("strategies the models leave out (the estimate says so)"),
                            _ESTIMATE_UNMODELLED_KEYS)
    drained = estimate.add_argument_group("a drain: N guests alike, K at once, sharing --bandwidth")
    drained.add_argument("--guests", type=_int_type("--guests", "8", minimum=1, maximum=256), metavar="N",
                         help="forecast draining N such guests instead of migrating one")
    drained.add_argument("--max-concurrent", type=_int_type("--max-concurrent", "2", minimum=1, maximum=256),
                         default=2, metavar="K", help="migrations at once (default 2); every K up to 8 is shown too")
    drained.add_argument("--setup-time", type=_duration_type("--setup-time", "100ms"), default=0.1,
                         metavar="DURATION", help="each migration's setup before its first page: a report's "
                                                  "setup-time (default 100ms)")
    estimate.add_argument("--json", action="store_true", help="print the estimate as JSON")

    sweep = commands.add_parser(
        "sweep", help="run a grid of migrations and measure them against the models",
        description="Run every migration of a grid (a TOML file, or lists on the command line; the command line "
                    "overrides the file), write each JSON report, a CSV with one row per run and a summary of "
                    "how well each model did.")
    sweep.add_argument("grid", nargs="?", metavar="GRID.toml", help="grid file (see bench/sweep.toml)")
    sweep.add_argument("--out", required=True, metavar="DIR", help="where the reports, sweep.csv and summary.txt go")
    axes = sweep.add_argument_group("axes: any run option of 'precopy migrate', as a comma-separated list")
    axes.add_argument("--lambda", type=_lambda_list_type, default=argparse.SUPPRESS, metavar="LIST",
                      help="dirty rate as a share of --max-bandwidth, instead of --dirty-rate: 0,0.3,0.6 or 0:0.9:0.3")
    axes.add_argument("--repeats", type=_int_type("--repeats", "3", minimum=1), default=argparse.SUPPRESS,
                      metavar="N", help="runs per grid point, seeds SEED, SEED+1, ... (default 1)")
    axes.add_argument("--guests", type=_int_list_type("--guests", "2,4,8"), default=argparse.SUPPRESS,
                      metavar="LIST", help="make each run a drain of that many guests alike, to a serving receiver "
                                           "on this machine, sharing --max-bandwidth: 2,4,8")
    axes.add_argument("--max-concurrent", type=_int_list_type("--max-concurrent", "1,2,4"), default=argparse.SUPPRESS,
                      metavar="LIST", help="a drain's migrations at once, K (default 2): 1,2,4")
    run_options.add_axes(axes)
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    sweep.add_argument("--quiet", action="store_true", help="no progress lines")

    plot = commands.add_parser(
        "plot", help="draw PNG figures from reports or a sweep",
        description="Draw a PNG per input: a report (.json) shows bytes per pass against each model, remaining "
                    "dirty bytes against the switch-over threshold, and the timeline with the blackout; a sweep "
                    "(.csv) shows the measured overhead factor against lambda with the 1.5-3x band and the models.")
    plot.add_argument("inputs", nargs="+", metavar="FILE", help="report .json or sweep .csv")
    plot.add_argument("--out", metavar="DIR", help="where the PNGs go (default: beside each input, same name)")
    compat = commands.add_parser(
        "compat", help="describe this host's processor, or a cluster's common feature set",
        description="As WS2025's dynamic processor compatibility: each host writes its processor with "
                    "--describe; --hosts computes the features all of them have, for a guest's --cpu FILE, so it "
                    "migrates anywhere in that cluster. Hosts of different vendors have no common set.")
    what = compat.add_mutually_exclusive_group(required=True)
    what.add_argument("--describe", action="store_true", help="print this host's processor as JSON")
    what.add_argument("--hosts", nargs="+", metavar="FILE", help="files from --describe, one per host")
    return estimate, sweep, plot, compat


# arguments -> Scenario -------------------------------------------------------------------
def scenario_from_args(args, destination=None):
    """The Scenario that parsed `migrate`/`send` arguments describe; raises UsageError.

    destination: the host the guest goes to, whose route gives the link's speed where the
    cap is a share of the link and --link is not given."""
    values = run_options.given(args)
    share = values.get("max_bandwidth")
    if isinstance(share, run_options.LinkShare) and "link" not in values and destination is not None:
        try:
            values["link"] = link_speed.speed_to(destination)
        except link_speed.UnknownLinkSpeed as error:
            raise UsageError(f"--max-bandwidth {share}: the link's speed cannot be read: {error}; give it "
                             f"(example: --link 10Gbit/s)") from None
    try:
        return run_options.scenario_from(values)
    except ValueError as error:
        raise UsageError(str(error)) from None


# commands --------------------------------------------------------------------------------
def _engine():
    # Imported late: the CLI must load (and show its help) even where the engine cannot,
    # and tests replace the module in sys.modules.
    try:
        return importlib.import_module("emulator.migration")
    except ModuleNotFoundError as error:
        if error.name != "emulator.migration":
            raise
        raise RuntimeError("the migration engine (emulator.migration) is not installed") from error


def _display(args):
    return None if args.quiet else LiveDisplay()


def _source_display(args):
    """The source's progress: a JSON event stream, the live display with interval lines, or none."""
    if args.json_stream:
        if args.json:
            raise UsageError("--json-stream: give it or --json, not both (its end event holds the summary)")
        return JsonStream(interval_s=args.interval)
    return None if args.quiet else LiveDisplay(interval_s=args.interval)


def _check_report_path(path):
    """Refuse an unwritable --report before the run, not after it."""
    if path is None:
        return
    if Path(path).is_dir():
        raise UsageError(f"--report: {path!r} is a directory; give a file name (example: --report {path}/run.json)")
    if not Path(path).resolve().parent.is_dir():
        raise UsageError(f"--report: directory of {path!r} does not exist (example: --report run.json)")


def _finish(report, args, display):
    from emulator.report import format_summary

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


def _check_memory_fits(needed, where):
    """Refuse guests that need more than this host's available memory before anything is allocated or started.

    where: what needs the memory, as the start of the message."""
    from emulator.receiver import available_memory_bytes

    available = available_memory_bytes()
    if needed > available:
        raise UsageError(f"--memory: {where} {units.format_bytes(needed)}, this host has "
                         f"{units.format_bytes(available)} available (example: --memory 1GiB)")


def _run_migrate(args):
    scenario = scenario_from_args(args, destination="127.0.0.1")  # the receiver listens on loopback
    _check_report_path(args.report)
    _check_memory_fits(2 * scenario.guest.memory_bytes,
                       "a migration on this machine holds the guest twice (source and destination):")
    _check_disk_path(args.disk_path, scenario.disk)
    _check_disk_dir(args.disk_dir)
    engine = _engine()
    display = _source_display(args)
    if display is not None:
        display.banner(describe_scenario(scenario))
    return _finish(engine.migrate(scenario, progress=display, disk_path=args.disk_path, disk_dir=args.disk_dir), args,
                   display)


def _run_send(args):
    scenario = scenario_from_args(args, destination=parse_endpoint(args.to)[0].strip("[]"))
    _check_report_path(args.report)
    _check_memory_fits(scenario.guest.memory_bytes, "the source guest needs")
    _check_disk_path(args.disk_path, scenario.disk)
    security = _client_security(args)
    engine = _engine()
    display = _source_display(args)
    if display is not None:
        display.banner(f"sending to {args.to}{' (CURVE)' if security else ''}\n{describe_scenario(scenario)}")
    return _finish(engine.send(scenario, args.to, progress=display, security=security, disk_path=args.disk_path),
                   args, display)


def _check_disk_dir(directory):
    if directory is not None and not writable_directory(directory):
        raise UsageError(f"--disk-dir: {directory} is not a writable directory")


def _check_disk_path(path, disk):
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


def _run_check(args):
    scenario = scenario_from_args(args, destination=parse_endpoint(args.to)[0].strip("[]"))
    answer = _engine().check(scenario, args.to, security=_client_security(args))
    if args.json:
        print(json.dumps({"to": args.to, "compatible": answer.compatible, **answer.to_body()}, indent=2))
    else:
        print(format_verdict(answer, args.to))
    return EXIT_OK if answer.compatible else EXIT_FAILED


def _run_drain(args):
    from emulator import drain

    scenario = scenario_from_args(args, destination=parse_endpoint(args.to[0])[0].strip("[]"))
    _check_report_path(args.report)
    values = {key: value for key, value in run_options.given(args).items() if key not in ("max_bandwidth", "link")}
    if args.per_migration_bandwidth is not None:
        values["max_bandwidth"] = args.per_migration_bandwidth
    try:
        guests = drain.load_inventory(args.inventory, values) if args.inventory else drain.repeated(args.guests, values)
        options = drain.DrainOptions(tuple(args.to), args.max_concurrent, args.order, args.placement,
                                     scenario.migration.max_bandwidth_bytes_per_s, args.retry)
    except ValueError as error:
        raise UsageError(f"--inventory: {error}" if args.inventory else str(error)) from None
    _check_memory_fits(sum(guest.scenario.guest.memory_bytes for guest in guests), f"the {len(guests)} guests need")
    report = drain.Drain(guests, options, progress=None if args.quiet else DrainBoard()).run()
    if args.json:
        sys.stdout.write(report.to_json())
    else:
        print(drain.format_drain(report))
    if args.report is not None:
        report.write(args.report)
    return exit_status([run.status if run.status in _EXIT_FOR_STATUS else "cancelled" for run in report.guests])


def _client_security(args):
    from emulator.security import ClientSecurity

    if (args.key is None) != (args.server_key is None):
        raise UsageError("--key and --server-key go together (example: --key src.key_secret --server-key dst.key)")
    if args.key is None:
        return None
    try:
        return ClientSecurity.from_files(args.key, args.server_key)
    except ValueError as error:
        raise UsageError(f"--key/--server-key: {error}") from None


def _server_security(args):
    from emulator.security import ServerSecurity

    if args.key is None:
        if args.allow:
            raise UsageError("--allow needs --key, this receiver's own secret key (example: --key dst.key_secret)")
        return None
    try:
        return ServerSecurity.from_files(args.key, args.allow)
    except ValueError as error:
        raise UsageError(f"--key/--allow: {error}") from None


def _print_outcome(outcome, as_json):
    if as_json:
        print(json.dumps(asdict(outcome)), flush=True)
        return
    for key, value in asdict(outcome).items():
        if value is not None:
            print(f"{key:<15} {value}")
    print(flush=True)


def _run_receive(args):
    if args.max_incoming != 1 and not args.serve:
        raise UsageError("--max-incoming: a single receive hosts one migration; give --serve too "
                         "(example: --serve --max-incoming 2)")
    _check_disk_dir(args.disk_dir)
    security = _server_security(args)
    engine = _engine()
    display = _display(args)

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
        last = engine.receive(args.listen, capacity_bytes=args.capacity, limits=limits, serve=args.serve,
                              max_incoming=args.max_incoming,
                              progress=display, timeout_s=args.timeout, wait_s=args.wait, security=security,
                              insecure=args.insecure, on_outcome=on_outcome, ready=on_ready)
    except ValueError as error:
        if listening:  # past setup: not a problem with --listen
            raise
        raise UsageError(f"--listen: {error} (--key FILE --allow FILE, or --insecure)") from None
    return EXIT_OK if last is None else exit_status([last.status])  # None: stopped between migrations


def _run_keygen(args):
    from emulator.security import generate

    try:
        public_file, secret_file = generate(args.dir, args.name, force=args.force)
    except FileExistsError as error:
        raise UsageError(f"keygen: {error}") from None
    print(f"public key  {public_file}   (give it to the other end: --allow on a receiver, --server-key on a sender)")
    print(f"secret key  {secret_file}   (keep it here: --key)")
    return EXIT_OK


_ESTIMATE_DIRTY_KEYS = ("dirty_rate", "pattern", "hot_fraction", "hot_share", "stride", "zipf_s", "vcpus",
                        "dirty_limit")
_ESTIMATE_DISK_KEYS = ("disk", "disk_block", "disk_write_rate", "disk_pattern")
_ESTIMATE_POLICY_KEYS = ("downtime_limit", "downtime_ramp", "max_passes", "max_time", "on_stall", "stall_passes",
                         "device_state")
_ESTIMATE_UNMODELLED_KEYS = ("auto_converge", "xbzrle", "postcopy", "postcopy_after")


def _run_estimate(args):
    from emulator import estimate

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
        print(estimate.format_estimate(result))
    return EXIT_OK


def _forecast_drain(inputs, args):
    from emulator import drain_estimate

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


def _run_sweep(args):
    from emulator import sweep

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
        for run in runs:
            print(f"{run.index:>4} {run.describe()}")
        return EXIT_OK
    out = Path(args.out)
    progress = None if args.quiet or not sys.stderr.isatty() else SweepProgress(sys.stderr)
    rows = sweep.run_sweep(runs, out, migrate=_engine().migrate, progress=progress)
    print(sweep.summary_text(rows), end="")
    print(f"\nwrote {out / 'sweep.csv'}, {out / 'summary.txt'} and {len(rows)} reports in {out / 'reports'}")
    return exit_status(row["status"] for row in rows)


def _run_plot(args):
    from emulator.plot import plot_file

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


def _run_compat(args):
    from emulator import compat

    if args.describe:
        print(json.dumps(compat.describe(), indent=2))
        return EXIT_OK
    try:
        common = compat.common({name: compat.load(name) for name in args.hosts})
    except ValueError as error:
        raise UsageError(f"--hosts: {error}") from None
    print(json.dumps({"hosts": args.hosts, **common.to_dict()}, indent=2))
    return EXIT_OK


def _running_migration(args):
    from emulator import control

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


def _run_status(args):
    from emulator import control

    status = control.ask(_running_migration(args), {"get": "status"})
    if args.json:
        print(json.dumps(status))
        return EXIT_OK
    print(format_status(status))
    return EXIT_OK


def _run_set(args):
    from emulator import control

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


_COMMANDS = {"migrate": _run_migrate, "send": _run_send, "check": _run_check, "drain": _run_drain, "receive": _run_receive, "keygen": _run_keygen,
             "status": _run_status, "set": _run_set, "estimate": _run_estimate, "sweep": _run_sweep,
             "plot": _run_plot, "compat": _run_compat}


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM cancels like Ctrl-C: both ends are told, the source guest resumes


def main(argv=None):
    """Run the command line; return the process exit status."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()  # inside: a Ctrl-C while it is built is a quiet cancel too
        args = parser.parse_args(argv)
        debug = args.debug
        if args.command is None:
            parser.print_help()
            return EXIT_OK
        return _COMMANDS[args.command](args)
    except UsageError as error:
        print(f"precopy: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as interrupt:
        if debug:
            traceback.print_exc()
        print("precopy: cancelled" + (f": {interrupt}" if str(interrupt) else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. piped into head: the reader left, nothing to report
        sys.stderr.close()
        return EXIT_FAILED
    except SystemExit as exit_:  # --help and --version exit through argparse
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    except Exception as error:  # noqa: BLE001 - a runtime failure: one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"precopy: error: {str(error) or type(error).__name__}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
