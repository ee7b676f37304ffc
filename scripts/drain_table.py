#!/usr/bin/env python3
"""Measure drain time against the number of guests and K, under one shared cap, on loopback.

Starts two serving receivers on 127.0.0.1 (each hosting up to 4 migrations at once), runs
`precopy drain` for every (guests, K) pair and prints a Markdown table of the drain time,
the mean and worst blackout and the mean link use. Example (the README's table):

    python scripts/drain_table.py --guests 2,4,8 --k 1,2,4 --memory 32MiB --cap 50MB/s
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
    process = subprocess.Popen([sys.executable, "-m", "emulator.cli", "receive", "--listen", "tcp://127.0.0.1:0",
                                "--serve", "--max-incoming", "4", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    for line in process.stderr:
        match = LISTENING.search(line)
        if match:
            return process, match.group(1)
    raise SystemExit("a receiver did not start")


def drain(endpoints, guests, k, args):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "drain.json")
        command = [sys.executable, "-m", "emulator.cli", "drain", "--guests", str(guests), "--max-concurrent", str(k),
                   "--memory", args.memory, "--fill", "random", "--codec", "raw", "--dirty-rate", args.dirty_rate,
                   "--max-bandwidth", args.cap, "--cpu", "any", "--quiet", "--report", path]
        for endpoint in endpoints:
            command += ["--to", endpoint]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        with open(path) as report:
            return json.load(report)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", default="2,4,8", help="guest counts, comma-separated")
    parser.add_argument("--k", default="1,2,4", help="K values (--max-concurrent), comma-separated")
    parser.add_argument("--memory", default="32MiB", help="each guest's memory")
    parser.add_argument("--dirty-rate", default="500", help="each guest's page writes/s")
    parser.add_argument("--cap", default="50MB/s", help="the shared link budget (--max-bandwidth)")
    args = parser.parse_args()
    receivers = [receiver() for _ in range(2)]
    try:
        print("| guests | K | drain time | mean blackout | worst blackout | link use (mean of busy samples) |")
        print("|---:|---:|---:|---:|---:|---:|")
        for guests in map(int, args.guests.split(",")):
            for k in map(int, args.k.split(",")):
                report = drain([endpoint for _, endpoint in receivers], guests, k, args)
                blackouts = [run["report"]["blackout"]["total_s"] for run in report["guests"]
                             if run["report"] and run["report"]["blackout"]]
                busy = [rate for _, rate in report["link"][1:-1]] or [rate for _, rate in report["link"]]
                print(f"| {guests} | {k} | {report['total_s']:.2f} s | {1000 * sum(blackouts) / len(blackouts):.0f} ms "
                      f"| {1000 * max(blackouts):.0f} ms | {sum(busy) / len(busy) / 1e6:.1f} MB/s |", flush=True)
    finally:
        for process, _ in receivers:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


if __name__ == "__main__":
    main()
