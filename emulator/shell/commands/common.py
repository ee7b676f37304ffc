"""What the commands share: exit statuses, the usage error, option rows, and the checks made before a run.

The exit statuses live here, not in emulator.shell.cli, because the commands return them and
raise UsageError, and ``python -m emulator.shell.cli`` runs cli.py as ``__main__``: a class the
commands imported from emulator.shell.cli would be a second copy that main() does not catch.
emulator.shell.cli re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulator.analysis import link_speed
from emulator.core import units
from emulator.shell import readers, run_options
from emulator.vm import allocator
from emulator.vm.disk import writable_directory

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
EXIT_FOR_STATUS = {"completed": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_INTERRUPTED, "lost": EXIT_FAILED}


def exit_status(statuses: Iterable[str]) -> int:
    """The exit status for migrations that ended with `statuses`: any cancelled, else any failed, else 0."""
    codes = {EXIT_FOR_STATUS[status] for status in statuses}
    return EXIT_INTERRUPTED if EXIT_INTERRUPTED in codes else max(codes, default=EXIT_OK)


class UsageError(Exception):
    """Bad command-line input; the message names the option."""


# a command's own options, beside the run options of emulator.shell.run_options ----------------------------
@dataclass(frozen=True)
class Option:
    """One option of a command: its flag and help, how a value is read (emulator.shell.readers; a refusal gives
    `example`), and what argparse is told besides. The help may say its default as ``%(default)s``; a text
    default is read as if it were typed."""

    flag: str
    help: str
    read: Callable[[str], Any] | None = None  # None: the text as typed, or no value (an action)
    example: str = ""
    default: Any = None
    metavar: str | None = None
    action: str | None = None  # store_true, append
    choices: tuple[str, ...] | None = None
    required: bool = False

    def add_to(self, group) -> None:
        """Add the option to an argparse parser, argument group or mutually exclusive group."""
        settings = {"help": self.help, "default": self.default, "metavar": self.metavar, "action": self.action,
                    "choices": self.choices, "required": self.required or None,
                    "type": None if self.read is None else readers.argument_type(self.flag, self.example, self.read)}
        group.add_argument(self.flag, **{key: value for key, value in settings.items() if value is not None})


def add_options(group, table: dict[str, Option], *flags: str) -> None:
    """Add the options `flags` of a command's `table` to `group`, in that order."""
    for flag in flags:
        table[flag].add_to(group)


def add_json_quiet(group, what: str) -> None:
    """--json (print `what` instead of the summary) and --quiet."""
    group.add_argument("--json", action="store_true", help=f"print {what} to stdout instead of the summary")
    group.add_argument("--quiet", action="store_true", help="no live display (the result is still printed)")


# arguments -> Scenario ----------------------------------------------------------------------------
def scenario_from_args(args, destination: str | None = None):
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


# checks before anything starts --------------------------------------------------------------------
def check_report_path(path: str | None) -> None:
    """Refuse an unwritable --report before the run, not after it."""
    if path is None:
        return
    if Path(path).is_dir():
        raise UsageError(f"--report: {path!r} is a directory; give a file name (example: --report {path}/run.json)")
    if not Path(path).resolve().parent.is_dir():
        raise UsageError(f"--report: directory of {path!r} does not exist (example: --report run.json)")


def check_memory_fits(needed: int, where: str) -> None:
    """Refuse guests that need more than this host's available memory before anything is allocated or started.

    where: what needs the memory, as the start of the message."""
    available = allocator.available_memory_bytes()
    if needed > available:
        raise UsageError(f"--memory: {where} {units.format_bytes(needed)}, this host has "
                         f"{units.format_bytes(available)} available (example: --memory 1GiB)")


def check_disk_dir(directory: str | None) -> None:
    """Refuse a --disk-dir mirrored disks cannot be written into."""
    if directory is not None and not writable_directory(directory):
        raise UsageError(f"--disk-dir: {directory} is not a writable directory")
