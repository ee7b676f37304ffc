"""Where pass 0's CPU goes, thread by thread, on both ends of a migration on this machine.

Migrates an idle guest (`emulator.running.children.migrate`, receiver in a child process on
TCP loopback) with each channel count, and reads every thread's CPU of both
processes from /proc at the start of pre-copy and at the end of pass 0. It prints,
per end, the CPU seconds per GiB of guest of each thread role (control: the main
thread; channel: the data plane's channel threads; zmq-io: ZeroMQ's I/O threads,
which make the kernel's TCP copies; scan: the source's zero test and hash; encode:
LZ4), the busiest single thread, and the serial ceiling it sets: 1.074 / its s/GiB in
GB/s (1 GiB = 1.074 GB), the fastest link a host could drive were that thread alone
the limit. The guest's own vCPUs are left out (there are none: the guest is idle).

    python bench/threads.py [--memory 2GiB] [--channels 1,4] [--codec raw] [--fill random]
                            [--verify incremental] [--batch-pages 1024] [--repeats 2] [--json FILE]

Medians over the repeats; channel counts run inside the repeat loop (A B A B), so
the machine's noise spreads over all of them.
"""

import argparse
import gc
import json
import os
import statistics
import sys

from emulator.analysis.report import host_info
from emulator.core.units import parse_size
from emulator.dataplane.threads import cpu_between, role, thread_cpu
from emulator.running.children import migrate
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import DEFAULT_BATCH_PAGES, VERIFY_MODES, MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec

from arguments import progress  # bench/, beside this script

GIB = 1 << 30
GB_PER_GIB = GIB / 1e9


def _children(pid):
    """Pids of `pid`'s child processes (any of its threads may have started one)."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as children:
                found += [int(child) for child in children.read().split()]
        except OSError:
            continue
    return found


class _Sampler:
    """A progress object that reads both processes' threads when pre-copy begins and when pass 0 ends."""

    def __init__(self):
        self.before = self.after = None
        self.receiver = None

    def _read(self):
        if self.receiver is None:
            children = _children(os.getpid())
            self.receiver = children[-1] if children else None
        return thread_cpu(), thread_cpu(self.receiver) if self.receiver else {}

    def phase(self, name, elapsed_s):
        if name == "precopy":
            self.before = self._read()

    def pass_done(self, record, page_size, total_pages):
        if record.pass_no == 0:
            self.after = self._read()

    def message(self, text):
        pass


def _by_role(used, main_tid, gib):
    """{role: (s/GiB of all its threads, s/GiB of its busiest)} and the busiest thread (name, s/GiB)."""
    roles = {}
    for thread in used:
        total, busiest = roles.get(role(thread, main_tid), (0.0, 0.0))
        roles[role(thread, main_tid)] = (total + thread.cpu_s / gib, max(busiest, thread.cpu_s / gib))
    roles.pop("guest", None)
    top = max((t for t in used if role(t, main_tid) != "guest"), key=lambda t: t.cpu_s)
    return roles, (top.name, top.cpu_s / gib)


def run_once(memory_bytes, channels, codec, fill, verify, batch_pages):
    scenario = Scenario(GuestSpec(memory_bytes, fill=fill), WorkloadSpec(rate_pages_per_s=0),
                        MigrationOptions(codec=codec, channels=channels, verify=verify, batch_pages=batch_pages))
    sampler = _Sampler()
    gc.collect()
    report = migrate(scenario, progress=sampler)
    if report.status != "completed" or sampler.after is None:
        return {"channels": channels, "status": report.status, "reason": report.reason}
    first = report.passes[0]
    gib = first.bytes_sent / GIB
    record = {"channels": channels, "status": "completed", "gb_s": first.bytes_sent / first.duration_s / 1e9}
    for end, index, main_tid in (("source", 0, os.getpid()), ("destination", 1, sampler.receiver)):
        used = cpu_between(sampler.before[index], sampler.after[index])
        roles, (top_name, top_s) = _by_role(used, main_tid, gib)
        record[end] = {"total": sum(total for total, _ in roles.values()), "roles": roles,
                       "busiest": top_s, "busiest_name": top_name, "ceiling_gb_s": GB_PER_GIB / top_s}
    return record


def _median(records, pick):
    values = [pick(r) for r in records if r["status"] == "completed"]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _role_figure(end, name, which):
    def pick(record):
        figures = record[end]["roles"].get(name)
        return None if figures is None else figures[which]
    return pick


def format_table(channel_counts, records):
    roles = sorted({name for r in records if r["status"] == "completed" for end in ("source", "destination")
                    for name in r[end]["roles"]})
    lines = ["CPU s/GiB of pass 0 by thread role (all threads of the role / its busiest thread), medians:", ""]
    header = f"{'channels':>8} {'GB/s':>6}  {'end':<11} {'total':>6} {'busiest':>8} {'ceiling':>8}  " + "  ".join(
        f"{name:>13}" for name in roles)
    lines += [header, "-" * len(header)]
    for channels in channel_counts:
        runs = [r for r in records if r["channels"] == channels]
        failed = [r for r in runs if r["status"] != "completed"]
        for end in ("source", "destination"):
            cells = []
            for name in roles:
                total, busiest = _median(runs, _role_figure(end, name, 0)), _median(runs, _role_figure(end, name, 1))
                cells.append(f"{'-':>13}" if total is None else f"{total:6.3f}/{busiest:6.3f}")
            rate = _median(runs, lambda r: r["gb_s"])
            total = _median(runs, lambda r, e=end: r[e]["total"])
            busiest = _median(runs, lambda r, e=end: r[e]["busiest"])
            ceiling = _median(runs, lambda r, e=end: r[e]["ceiling_gb_s"])
            if total is None:
                lines.append(f"{channels:>8} {'n/a':>6}  {end:<11} no completed run")
                continue
            lines.append(f"{channels:>8} {rate:6.2f}  {end:<11} {total:6.3f} {busiest:8.3f} {ceiling:6.1f}GB  "
                         + "  ".join(cells))
        for r in failed:
            lines.append(f"{'':>8} {r['status']}: {r['reason']}")
    lines += ["", "busiest: the single thread with the most CPU per GiB; ceiling: 1.074 / busiest, in GB/s."]
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", type=parse_size, default=2 * GIB, help="guest memory (default 2GiB)")
    parser.add_argument("--channels", default="1,4", help="comma-separated channel counts (default 1,4)")
    parser.add_argument("--codec", choices=("raw", "lz4"), default="raw")
    parser.add_argument("--fill", default="random", help="guest fill (default random)")
    parser.add_argument("--verify", choices=VERIFY_MODES, default="incremental")
    parser.add_argument("--batch-pages", type=int, default=DEFAULT_BATCH_PAGES,
                        help=f"pages per data message (default {DEFAULT_BATCH_PAGES})")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", metavar="FILE", help="write every run's figures here")
    args = parser.parse_args(argv)
    try:
        args.channels = [int(item) for item in args.channels.split(",")]
    except ValueError:
        parser.error(f"--channels takes whole numbers separated by commas, got {args.channels!r}")
    if args.repeats < 1 or any(c < 1 for c in args.channels):
        parser.error("--repeats and every channel count must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    records = []
    for repeat in range(args.repeats):
        for channels in args.channels:
            progress(f"repeat {repeat + 1}/{args.repeats}: {channels} channel(s)")
            records.append(run_once(args.memory, channels, args.codec, args.fill, args.verify, args.batch_pages))
    print(f"{args.memory / GIB:g} GiB {args.fill} guest, {args.codec}, verify {args.verify}, "
          f"{args.batch_pages} pages per message, idle; "
          f"{host_info().get('cpu_model', 'unknown CPU')}")
    print(format_table(args.channels, records))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"host": host_info(), "runs": records}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
