"""What a person or a script sees of a migration while it runs: the live display (a line per
phase, per interval and per pass: the engine's Progress), the JSON event stream, a sweep's
progress lines, and the texts of `precopy status` and the start banner.

Line-oriented on purpose (no curses, no carriage returns): the output reads the same in a
terminal, a log file and a CI transcript. Phase and pass lines appear only when enabled,
which by default means the stream is a terminal. Messages (stall detected, refused, ...)
are notable events and are printed whenever the display exists; `precopy --quiet` gives
the engine no display at all.
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
import threading
import time
from dataclasses import asdict

from emulator.core.units import compact_size, format_bytes, format_count, format_duration, format_rate

__all__ = ["JsonStream", "LiveDisplay", "SweepProgress", "describe_scenario", "format_interval_line",
           "format_progress_line", "format_status"]

DEFAULT_INTERVAL_S = 1.0  # a status line this often during a pass, as iperf3's interval reports
COLUMNS = 100  # the widest line the display writes


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
    ) + (_disk_part(record) if record.disk_blocks_sent or record.disk_remaining_bytes else "")


def _disk_part(record):
    """A pass's mirrored disk, on a line of its own under the memory's."""
    return (f"\n            disk {format_bytes(record.disk_bytes_sent)} ({format_bytes(record.disk_wire_bytes)} wire)"
            f"  left {format_bytes(record.disk_remaining_bytes)}  {record.disk_writes_rate:,.0f} block writes/s"
            + (f"  waited for the disk {format_duration(record.disk_wait_s)}" if record.disk_wait_s else ""))


def process_age_s():
    """Seconds since this process started (Linux: /proc), or None where that cannot be read."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name
            return float(uptime.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def format_interval_line(sample, page_size):
    """One line (within 100 columns, indented) for a pass in progress (sample: a report.Interval)."""
    done = f"{format_bytes(sample.pages_sent * page_size)} of {format_bytes(sample.pass_pages * page_size)}"
    if sample.pass_left_s is None:
        when = "no rate yet"
    else:
        when = (f"pass left {format_duration(sample.pass_left_s)}, end ~{format_duration(sample.end_s)}"
                + ("" if sample.firm else " (guess)"))
    return (f"  ... {done} at {format_rate(sample.wire_bytes_per_s)}"
            f"  dirty {format_bytes(sample.dirty_pages * page_size)}  {when}")


def describe_scenario(scenario):
    """Two lines of what a migration runs: the guest and its writers; the codec, channels, cap and limit."""
    guest, workload, migration = scenario.guest, scenario.workload, scenario.migration
    rate = "unpaced" if workload.unpaced else f"{workload.rate_pages_per_s:,.0f} page writes/s"
    return (f"guest {format_bytes(guest.memory_bytes)} of {compact_size(guest.page_size)} pages ({guest.fill}), "
            f"{format_count(workload.vcpus, 'vCPU')} writing {workload.pattern} at {rate}\n"
            f"{migration.codec} over {format_count(migration.channels, 'channel')}, "
            f"bandwidth cap {format_rate(migration.max_bandwidth_bytes_per_s)}, "
            f"downtime limit {format_duration(migration.policy.downtime_limit_s)}" + _describe_disk(scenario))


def _describe_disk(scenario):
    disk = scenario.disk
    if disk is None:
        return ""
    rate = "flat out" if math.isinf(disk.write_rate_bytes_per_s) else format_rate(disk.write_rate_bytes_per_s)
    how = "mirrored (shared-nothing)" if scenario.mirrored_disk else "on shared storage"
    return (f"\ndisk {format_bytes(disk.size_bytes)} of {compact_size(disk.block_size)} blocks ({disk.fill}) {how}, "
            f"written {disk.pattern} at {rate}")


def format_verdict(answer, endpoint):
    """`precopy check`'s text for a destination's Verdict: every problem, each with its fix, within COLUMNS."""
    if answer.compatible:
        lines = [f"compatible: {endpoint} would host this guest"]
    else:
        lines = [f"incompatible: {endpoint} would refuse this guest, for "
                 f"{format_count(len(answer.problems), 'reason')}:"]
        for number, problem in enumerate(answer.problems, 1):
            lines += textwrap.wrap(problem.text, COLUMNS, initial_indent=f"{number:>2}. ", subsequent_indent=" " * 4)
            lines += textwrap.wrap(problem.fix, COLUMNS, initial_indent="    fix: ", subsequent_indent=" " * 9)
    if answer.busy:
        lines.append("busy: it is receiving another migration now; until that ends, a migration is refused as busy")
    return "\n".join(lines)


def format_status(status):
    """`precopy status`'s text for a running migration's status (emulator.running.control)."""
    page = status["page_size"]
    rate = status["bandwidth_bytes_per_s"]
    lines = [f"phase        {status['phase']} after {format_duration(status['elapsed_s'])}, pass {status['pass']} "
             f"({format_bytes(status['pass_pages_sent'] * page)} of it sent)",
             f"transferred  {format_bytes(status['transferred_bytes'])} on the wire",
             f"remaining    {format_bytes(status['remaining_pages'] * page)} to send "
             f"({status['remaining_pages']:,} of {status['total_pages']:,} pages)"]
    if status["disk_remaining_bytes"] is not None:  # a mirrored disk
        lines.append(f"disk         {format_bytes(status['disk_remaining_bytes'])} dirty of "
                     f"{format_bytes(status['disk_bytes'])} mirrored")
    if rate is not None:
        lines.append(f"last pass    {format_rate(rate)}, {status['dirty_pages_rate']:,.0f} page writes/s")
    lines.append(f"parameters   downtime limit {format_duration(status['downtime_limit_s'])}, "
                 f"bandwidth cap {format_rate(status['max_bandwidth_bytes_per_s'])}")
    return "\n".join(lines)


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
