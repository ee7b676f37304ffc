"""What a person or a script sees of a migration while it runs: the live display (a line per
phase, per interval and per pass: the engine's Progress), the JSON event stream, a sweep's
progress lines and a drain's board. The lines themselves are rendered by emulator.analysis.text.

Line-oriented on purpose (no curses, no carriage returns): the output reads the same in a
terminal, a log file and a CI transcript. Phase and pass lines appear only when enabled,
which by default means the stream is a terminal. Messages (stall detected, refused, ...)
are notable events and are printed whenever the display exists; `precopy --quiet` gives
the engine no display at all.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from dataclasses import asdict

from emulator.analysis.text import COLUMNS, format_interval_line, format_progress_line
from emulator.core.units import format_count, format_duration

__all__ = ["JsonStream", "LiveDisplay", "SweepProgress"]

DEFAULT_INTERVAL_S = 1.0  # a status line this often during a pass, as iperf3's interval reports


def process_age_s():
    """Seconds since this process started (Linux: /proc), or None where that cannot be read."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name
            return float(uptime.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class DrainBoard:
    """A drain's live display: each event as a line (as LiveDisplay.message) and, on a terminal, a board
    below them, one line per guest (queued, pass N, blackout, done, failed) and the link's use, redrawn in
    place as they change. Called from one thread.
    """

    def __init__(self, stream=None):
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty())
        self._lines, self._shown = [], 0

    def message(self, text):
        self._erase()
        self.stream.write("\n".join(textwrap.wrap(text, COLUMNS, initial_indent="precopy: ",
                                                  subsequent_indent=" " * 9)) + "\n")
        self._draw()

    def board(self, lines):
        """The board's lines now (shown on a terminal only)."""
        self._lines = [line[:COLUMNS] for line in lines]
        self._erase()
        self._draw()

    def _erase(self):
        if self._shown:
            self.stream.write(f"\x1b[{self._shown}F\x1b[J")  # up to the board's first line, clear below
            self._shown = 0

    def _draw(self):
        if self.live and self._lines:
            self.stream.write("\n".join(self._lines) + "\n")
            self._shown = len(self._lines)
        self.stream.flush()


class LiveDisplay:
    """Prints a migration's progress to a stream, one flushed line at a time.

    stream: where to write (default sys.stderr, looked up when the display is made);
    enabled: print phase and pass lines; None = only if the stream is a terminal.
    interval_s: a line this often during a pass (0: per pass only).
    Safe to call from several threads (each line is written whole).
    """

    def __init__(self, stream=None, enabled=None, interval_s=DEFAULT_INTERVAL_S):
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.interval_s = interval_s if enabled else 0  # no lines shown: no samples taken
        self._lock = threading.Lock()

    def _write(self, line):
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def banner(self, text):
        """What is about to run (only when enabled): its first line after "precopy:", the rest indented."""
        if self.enabled:
            first, *more = text.splitlines()
            self._write("\n".join([f"precopy: {first}", *(f"         {line}" for line in more)]))

    # Progress ------------------------------------------------------------------------
    def phase(self, name, elapsed_s):
        """A phase started, `elapsed_s` seconds after the migration did."""
        if not self.enabled:
            return
        age = process_age_s() if name == "setup" else None
        self._write(f"[{elapsed_s:9.3f} s] {name}"  # what the clock on the wall adds to the report's times:
                    + (f" (after {format_duration(age)} of start-up: imports, receiver, kernels)" if age else ""))

    def pass_done(self, record, page_size, total_pages):
        """A pre-copy pass finished (record: PassRecord; page_size in bytes)."""
        if self.enabled:
            self._write(f"  {format_progress_line(record, page_size, total_pages)}")

    def interval(self, sample, page_size):
        """A pass in progress (sample: report.Interval)."""
        if self.enabled:
            self._write(format_interval_line(sample, page_size))

    def message(self, text):
        """A notable event: printed even when the phase and pass lines are not; wrapped to fit COLUMNS."""
        self._write("\n".join(textwrap.wrap(text, COLUMNS, initial_indent="precopy: ", subsequent_indent=" " * 9,
                                             break_on_hyphens=False)))


class JsonStream:
    """The migration as newline-delimited JSON events on `stream` (default stdout), for dashboards and scripts.

    Events, each an object with "event" and "elapsed_s" where known: start (what runs,
    before anything else), phase (each phase but the blackout), interval (report.Interval's
    fields), pass (a PassRecord's), blackout, message (text), end (status, reason and the
    summary).
    """

    def __init__(self, stream=None, interval_s=DEFAULT_INTERVAL_S):
        self.stream = sys.stdout if stream is None else stream
        self.interval_s = interval_s
        self._lock = threading.Lock()

    def _emit(self, event, **fields):
        with self._lock:
            self.stream.write(json.dumps({"event": event, **fields}, allow_nan=False) + "\n")
            self.stream.flush()

    def banner(self, text):
        self._emit("start", text=text)

    def phase(self, name, elapsed_s):
        if name == "blackout":
            self._emit("blackout", elapsed_s=elapsed_s)
        else:
            self._emit("phase", phase=name, elapsed_s=elapsed_s)

    def pass_done(self, record, page_size, total_pages):
        self._emit("pass", **asdict(record), page_size=page_size, total_pages=total_pages)

    def interval(self, sample, page_size):
        self._emit("interval", **asdict(sample), page_size=page_size)

    def message(self, text):
        self._emit("message", text=text)

    def end(self, report):
        self._emit("end", status=report.status, reason=report.reason, summary=report.summary)


class SweepProgress:
    """A line per run on stderr: what starts, then what it measured and the time left."""

    def __init__(self, stream):
        self.stream = stream
        self.began = None

    def started(self, run, total):
        self.began = self.began or time.monotonic()
        print(f"[{run.index:>{len(str(total))}}/{total}] {run.describe()} ...", file=self.stream, flush=True)

    def finished(self, run, total, row, seconds):
        elapsed = time.monotonic() - self.began
        left = elapsed / run.index * (total - run.index)
        if row.get("measured_factor") is not None:
            result = (f"factor {row['measured_factor']:.2f} (geometric {row['geometric_factor']:.2f},"
                      f" working set {row['working_set_factor']:.2f}), {format_count(row['passes'], 'pass')},"
                      f" blackout {format_duration(row['blackout_s'])}")
        else:
            result = f"{row['status']}: {row['reason']}"
        print(f"{'':>{2 * len(str(total)) + 3}} {format_duration(seconds)}: {result};"
              f" about {format_duration(left)} left", file=self.stream, flush=True)
