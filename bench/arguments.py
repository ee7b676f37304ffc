"""What the end-to-end benchmarks (throughput.py, qemu.py) share: argument types, progress lines, cells.

Imported as a sibling module: the scripts run as `python bench/NAME.py`, which puts
bench/ on the import path.
"""

import argparse
import sys
import time

from emulator.core.units import format_bytes, parse_size

_START = time.monotonic()


def started_at():
    """When the benchmark started (time.monotonic): the origin of progress stamps and of its wall time."""
    return _START


def keep_clock(start):
    """In a child process: stamp progress lines from the parent's `start`, not the child's."""
    global _START
    _START = start


def progress(text):
    """A progress line on stderr, stamped with the seconds since the benchmark started."""
    print(f"[{time.monotonic() - _START:7.1f} s] {text}", file=sys.stderr, flush=True)


def cell(value, spec=".2f"):
    """A table cell: the value formatted, or n/a."""
    return "n/a" if value is None else format(value, spec)


def size_list(multiple_bytes):
    """An argparse type: comma-separated sizes, each a positive multiple of `multiple_bytes`."""

    def parse(text):
        sizes = []
        for item in text.split(","):
            try:
                size = parse_size(item.strip())
            except ValueError as error:
                raise argparse.ArgumentTypeError(str(error)) from None
            if size <= 0 or size % multiple_bytes:
                raise argparse.ArgumentTypeError(f"size {item.strip()!r} must be a positive multiple of "
                                                 f"{format_bytes(multiple_bytes)}")
            sizes.append(size)
        return sizes

    return parse


def choice_list(known, what):
    """An argparse type: comma-separated names out of `known`, in order, without repeats."""

    def parse(text):
        items = [item.strip() for item in text.split(",")]
        unknown = [item for item in items if item not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown)}: expected some of {','.join(known)}")
        return list(dict.fromkeys(items))

    return parse


def repeats(text):
    """An argparse type: a whole number of runs, at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--repeats must be a whole number >= 1, got {text!r}")
    return value
