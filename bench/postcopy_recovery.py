"""A post-copy migration whose link is cut, and comes back: the migration recovers and completes.

Two network namespaces joined by a veth pair (scripts/netns_link.py builds them), `precopy
receive` in one and `precopy send` in the other. Once the source reports the post-copy phase
(its --json-stream), the link is taken down (`ip link set DEV down` on the source's end) for
--cut seconds, then brought up. With a --timeout shorter than the cut, both ends see the
link break (ZMTP heartbeats, silence), pause, and the source connects anew (RECOVER); the
pages still missing then cross again. Runs --runs times with a cut and as many without,
interleaved, and prints per run: status, recoveries, time paused, post-copy blocktime, the
digests' match, wall time. Writes them as JSON.

    sudo python bench/postcopy_recovery.py [--cut 3s] [--runs 1] [--json FILE]

Needs root and iproute2. Exit status 0 when every run completed with matching digests (and
every cut run recovered), 1 if not, 2 on bad arguments, 3 when the namespaces cannot be made.
"""

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from emulator.core.units import parse_duration

from arguments import progress  # bench/, beside this script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PORT = 47100
GUEST = ["--memory", "128MiB", "--fill", "random", "--codec", "raw", "--vcpus", "2", "--pattern", "uniform",
         "--dirty-rate", "20000", "--postcopy-after", "1", "--max-bandwidth", "40MB/s", "--timeout", "1s",
         "--postcopy-recover-window", "30s"]
CUT_AFTER_S = 0.3  # into post-copy, the link goes down
RUN_LIMIT_S = 120


def load_netns_link():
    spec = importlib.util.spec_from_file_location("netns_link", ROOT / "scripts" / "netns_link.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def one_run(netns, link, precopy, cut_s, number):
    """One migration over `link`, cut for `cut_s` seconds into post-copy (0: not cut); its figures."""
    endpoint = f"tcp://{netns.DESTINATION_ADDR}:{PORT}"
    with tempfile.TemporaryDirectory(prefix="precopy-recovery-") as work:
        report_path = Path(work) / "report.json"
        # --insecure: the namespaces are this run's own, joined only to each other
        receiver = subprocess.Popen(["ip", "netns", "exec", link.destination_ns, precopy, "receive", "--listen",
                                     endpoint, "--timeout", "1s", "--quiet",
                                     "--insecure"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
        sender = None
        try:
            deadline = time.monotonic() + netns.LISTEN_TIMEOUT_S
            while not netns._listening(receiver.pid, netns.DESTINATION_ADDR, PORT):
                if receiver.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"precopy receive did not listen: {receiver.stderr.read()[-500:]}")
                time.sleep(0.05)
            started = time.monotonic()
            sender = subprocess.Popen(["ip", "netns", "exec", link.source_ns, precopy, "send", "--to", endpoint,
                                       *GUEST, "--json-stream", "--report", str(report_path)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True)
            cut = threading.Thread(target=_cut_in_postcopy, args=(sender, link, netns, cut_s), daemon=True)
            cut.start()
            sender.wait(RUN_LIMIT_S)
            wall_s = time.monotonic() - started
            receiver.wait(15)
        finally:
            for process in (sender, receiver):
                if process is not None:
                    netns._stop(process)
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
    postcopy = report.get("postcopy") or {}
    row = {"run": number, "cut_s": cut_s, "status": report.get("status"), "reason": report.get("reason"),
           "recoveries": postcopy.get("recoveries"), "paused_s": postcopy.get("paused_s"),
           "blocktime_s": postcopy.get("blocktime_s"), "vcpu_blocktime_s": postcopy.get("vcpu_blocktime_s"),
           "missing_pages": postcopy.get("missing_pages"), "digests_match": report.get("digests_match"),
           "wall_s": round(wall_s, 2), "receiver_exit": receiver.returncode}
    progress(f"run {number} ({'cut ' + format(cut_s, 'g') + ' s' if cut_s else 'no cut'}): {row['status']}, "
             f"recoveries {row['recoveries']}, paused {row['paused_s']}, digests match {row['digests_match']}")
    return row


def _cut_in_postcopy(sender, link, netns, cut_s):
    """Read the sender's event stream; CUT_AFTER_S into post-copy take the link down for `cut_s`."""
    for line in sender.stdout:
        event = json.loads(line) if line.startswith("{") else {}
        if cut_s and event.get("event") == "phase" and event.get("phase") == "postcopy":
            time.sleep(CUT_AFTER_S)
            subprocess.run(["ip", "-n", link.source_ns, "link", "set", netns.SOURCE_DEV, "down"], check=True)
            time.sleep(cut_s)
            subprocess.run(["ip", "-n", link.source_ns, "link", "set", netns.SOURCE_DEV, "up"], check=True)
            cut_s = 0
    # the rest of the stream is read above until the sender ends


def held(row):
    return row["status"] == "completed" and row["digests_match"] is True and (
        not row["cut_s"] or (row["recoveries"] or 0) >= 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cut", type=parse_duration, default=3.0, metavar="DURATION",
                        help="how long the link stays down (default 3 s)")
    parser.add_argument("--runs", type=int, default=1, metavar="N", help="runs with a cut, and as many without")
    parser.add_argument("--json", default=str(RESULTS / "postcopy_recovery.json"), metavar="FILE")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.cut <= 0:
        parser.error("--runs must be >= 1 and --cut > 0")
    netns = load_netns_link()
    problem = netns.netns_problem()
    if problem:
        print(f"postcopy_recovery: {problem}", file=sys.stderr)
        return 3
    precopy = netns.find_precopy(None)
    link = netns.Link(netns.unique_tag(), 1500)
    rows = []
    try:
        link.create()
        for number in range(args.runs):
            for cut_s in (args.cut, 0.0):  # interleaved: a cut run, then one without
                rows.append(one_run(netns, link, precopy, cut_s, len(rows) + 1))
    finally:
        link.remove()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"guest": GUEST, "cut_after_s": CUT_AFTER_S, "runs": rows}, indent=1))
    print(f"{'run':>3} {'cut':>5} {'status':<10} {'recov':>5} {'paused s':>8} {'blocktime s':>11} {'wall s':>7}")
    for row in rows:
        print(f"{row['run']:>3} {row['cut_s']:>5g} {row['status'] or '-':<10} {row['recoveries'] or 0:>5} "
              f"{row['paused_s'] or 0:>8.2f} {row['blocktime_s'] or 0:>11.3f} {row['wall_s']:>7.2f}")
    return 0 if all(map(held, rows)) else 1


if __name__ == "__main__":
    sys.exit(main())
