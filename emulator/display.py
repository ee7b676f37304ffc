"""The live display of a migration: one line per phase and one per pass (the engine's Progress).

Line-oriented on purpose (no curses, no carriage returns): the output reads the same in a
terminal, a log file and a CI transcript. Phase and pass lines appear only when enabled,
which by default means the stream is a terminal. Messages (stall detected, refused, ...)
are notable events and are printed whenever the display exists; `precopy --quiet` gives
the engine no display at all.
"""

from __future__ import annotations

import sys
import threading

from emulator.units import format_bytes, format_duration, format_rate

__all__ = ["LiveDisplay", "format_progress_line"]


def format_progress_line(record, page_size, total_pages):
    """One line (within 100 columns, indented) for a finished pass: sent, rate, what is left, page writes/s.

    record: a PassRecord; page_size: bytes; total_pages: the guest's page count (for the
    share of memory still dirty).
    """
    remaining_bytes = record.remaining_pages * page_size
    share = 100 * record.remaining_pages / total_pages if total_pages else 0.0
    # the throttle is not repeated here: auto-converge says so in a message when it changes
    return (
        f"pass {record.pass_no:>3}  {format_bytes(record.bytes_sent)} ({format_bytes(record.wire_bytes)} wire)"
        f" in {format_duration(record.duration_s)} at {format_rate(record.bandwidth_bytes_per_s)}"
        f"  left {format_bytes(remaining_bytes)} ({share:.1f}%)  {record.dirty_pages_rate:,.0f} writes/s"
    )


class LiveDisplay:
    """Prints a migration's progress to a stream, one flushed line at a time.

    stream: where to write (default sys.stderr, looked up when the display is made);
    enabled: print phase and pass lines; None = only if the stream is a terminal.
    Safe to call from several threads (each line is written whole).
    """

    def __init__(self, stream=None, enabled=None):
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self._lock = threading.Lock()

    def _write(self, line):
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def banner(self, text):
        """A line about what is about to run (only when enabled)."""
        if self.enabled:
            self._write(f"precopy: {text}")

    # Progress ------------------------------------------------------------------------
    def phase(self, name, elapsed_s):
        """A phase started, `elapsed_s` seconds after the migration did."""
        if self.enabled:
            self._write(f"[{elapsed_s:9.3f} s] {name}")

    def pass_done(self, record, page_size, total_pages):
        """A pre-copy pass finished (record: PassRecord; page_size in bytes)."""
        if self.enabled:
            self._write(f"  {format_progress_line(record, page_size, total_pages)}")

    def message(self, text):
        """A notable event: printed even when the phase and pass lines are not."""
        self._write(f"precopy: {text}")
