#!/usr/bin/env python3
"""Measure drain time against the number of guests and K, beside the forecast.

On loopback (the default) it starts two serving receivers on 127.0.0.1, each hosting up
to 4 migrations at once, and the drains share one --cap. With --netns RATE (root) each
drain runs over a link of that rate between two network namespaces (scripts/netns_link.py
--drain), one serving receiver at the far end. It prints a Markdown table of the drain
time, the mean and worst blackout, the link's mean use and `precopy estimate --guests`'s
forecast for the same drain. docs/guide.md's tables:

    python scripts/drain_table.py --guests 2,4,8 --k 1,2,4 --memory 32MiB --cap 50MB/s
    sudo .venv/bin/python scripts/drain_table.py --netns 1gbit --link 117MB/s --memory 128MiB
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile

LISTENING = re.compile(r"listening on (tcp://\S+)")


def receiver():
    process = subprocess.Popen([sys.executable, "-m", "emulator.shell.cli", "receive", "--listen", "tcp://127.0.0.1:0",
                                "--serve", "--max-incoming", "4", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    for line in process.stderr:
        match = LISTENING.search(line)
        if match:
            return process, match.group(1)
    raise SystemExit("a receiver did not start")


def guest_options(guests, k, args):
    return ["--guests", str(guests), "--max-concurrent", str(k), "--memory", args.memory, "--fill", "random",
            "--codec", "raw", "--dirty-rate", args.dirty_rate, "--cpu", "any", "--quiet"]


def drain(endpoints, guests, k, args):
    """One drain's report (a dict): to `endpoints` on loopback, or over --netns."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "drain.json")
        options = [*guest_options(guests, k, args), "--report", path]
        if args.netns:
            precopy = os.path.join(os.path.dirname(sys.executable), "precopy")
            command = [sys.executable, os.path.join(os.path.dirname(__file__), "netns_link.py"), "--rate", args.netns,
                       "--drain", "--precopy", precopy, "--receive-option=--max-incoming=8", "--", *options]
        else:
            command = [sys.executable, "-m", "emulator.shell.cli", "drain", *options, "--max-bandwidth", args.cap]
            for endpoint in endpoints:
                command += ["--to", endpoint]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        with open(path) as report:
            return json.load(report)


def forecast(guests, k, args):
    """`precopy estimate --guests`'s drain time for this drain, in seconds."""
    out = subprocess.run([sys.executable, "-m", "emulator.shell.cli", "estimate", "--guests", str(guests), "--max-concurrent",
                          str(k), "--memory", args.memory, "--dirty-rate", args.dirty_rate, "--bandwidth",
                          args.link or args.cap, "--setup-time", args.setup_time, "--json"],
                         check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)["forecasts"]
    return next(row["total_s"] for row in rows if row["max_concurrent"] == k)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", default="2,4,8", help="guest counts, comma-separated")
    parser.add_argument("--k", default="1,2,4", help="K values (--max-concurrent), comma-separated")
    parser.add_argument("--memory", default="32MiB", help="each guest's memory")
    parser.add_argument("--dirty-rate", default="500", help="each guest's page writes/s")
    parser.add_argument("--cap", default="50MB/s", help="on loopback: the shared link budget (--max-bandwidth)")
    parser.add_argument("--netns", metavar="RATE", help="drain over a namespace link of this tc rate (1gbit)")
    parser.add_argument("--link", metavar="RATE", help="the link's rate for the forecast (default: --cap)")
    parser.add_argument("--setup-time", default="100ms", help="each migration's setup, for the forecast")
    args = parser.parse_args()
    receivers = [] if args.netns else [receiver() for _ in range(2)]
    try:
        print("| guests | K | drain time | mean blackout | worst blackout | link use | forecast |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for guests in map(int, args.guests.split(",")):
            for k in map(int, args.k.split(",")):
                report = drain([endpoint for _, endpoint in receivers], guests, k, args)
                blackouts = [run["report"]["blackout"]["total_s"] for run in report["guests"]
                             if run["report"] and run["report"]["blackout"]]
                busy = [rate for _, rate in report["link"][1:-1]] or [rate for _, rate in report["link"]]
                predicted = forecast(guests, k, args)
                print(f"| {guests} | {k} | {report['total_s']:.2f} s | {1000 * sum(blackouts) / len(blackouts):.0f} ms "
                      f"| {1000 * max(blackouts):.0f} ms | {sum(busy) / len(busy) / 1e6:.1f} MB/s "
                      f"| {predicted:.2f} s ({100 * (predicted / report['total_s'] - 1):+.0f}%) |", flush=True)
    finally:
        for process, _ in receivers:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


if __name__ == "__main__":
    main()
