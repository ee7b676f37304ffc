"""The `precopy` command line: parses arguments and runs a command (emulator.shell.commands), one line per error.

    precopy migrate [options]                     both ends on this machine
    precopy send --to tcp://HOST:PORT [options]   source end; the receiver runs elsewhere
    precopy receive --listen tcp://ADDR:PORT      destination end

Each command is a module of emulator.shell.commands with ``add_parser`` and ``run``; this module
assembles their parsers and turns what they raise into an exit status. Exit statuses:
EXIT_MEANINGS (emulator.shell.commands.common), which --help lists (the README's table). Bad
usage is one line ``precopy: error: ...`` naming the option. ``precopy`` with no
subcommand prints the help and exits 0: asking for orientation is not an error.
``--debug`` shows tracebacks instead of one-line errors.

Sizes, rates and durations are read by emulator.core.units (see its docstring for the units).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import signal
import sys
import threading
import traceback

from emulator.core import units
from emulator.shell.commands import compat, drain, estimate, keygen, migrate, plot, receive, status, sweep
from emulator.shell.commands.common import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_MEANINGS, EXIT_OK, EXIT_USAGE, EXIT_WARNING,
                                            UsageError, exit_status, scenario_from_args)
from emulator.wire.protocol import VERSION as PROTOCOL_VERSION

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_MEANINGS", "EXIT_OK", "EXIT_USAGE", "EXIT_WARNING", "UsageError",
           "build_parser", "exit_status", "main", "scenario_from_args"]

# Which module runs each command, in the order --help lists them.
COMMANDS = {"migrate": migrate, "send": migrate, "check": migrate, "receive": receive, "keygen": keygen,
            "status": status, "set": status, "drain": drain, "estimate": estimate, "sweep": sweep, "plot": plot,
            "compat": compat}


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


# the parser ------------------------------------------------------------------------------
def _add_debug(parser, default):
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks on errors")


def build_parser():
    """The argparse parser of `precopy` and its subcommands."""
    parser = _Parser(prog="precopy", description="Emulate live-migration memory pre-copy: a guest's memory is "
                     "streamed from a sender to a receiver over ZeroMQ while writer threads dirty it.",
                     epilog="Run 'precopy COMMAND --help' for a command's options. Exit status: "
                            + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_MEANINGS.items()) + ".")
    _add_debug(parser, default=False)
    parser.add_argument("--version", action="version",
                        version=f"precopy {importlib.metadata.version('precopy')} (wire protocol {PROTOCOL_VERSION})")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in dict.fromkeys(COMMANDS.values()):  # each module once, in order
        command.add_parser(subcommands)
    for sub in subcommands.choices.values():
        # SUPPRESS: a subcommand's default must not undo a --debug given before it.
        _add_debug(sub, default=argparse.SUPPRESS)
    return parser


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
        return COMMANDS[args.command].run(args)
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
