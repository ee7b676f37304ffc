#!/usr/bin/env python3
"""Migrate over a real, shaped link: two network namespaces joined by a veth pair.

    sudo scripts/netns_link.py --rate 1gbit [--delay 2ms] [--loss 0.1%] [--] [send options]

Builds a source and a destination namespace (198.18.0.1 and 198.18.0.2, the
benchmarking range, on a veth pair), shapes both directions of the link with tc
(tbf for the rate; netem for delay and loss), runs `precopy receive` in the
destination namespace and `precopy send` in the source one, and passes every option it
does not know to `precopy send` (so `--json`, `--report FILE`, `--memory` ... work as
usual). Where the kernel has no netem, --loss falls back to nftables: a random drop at
the ingress of each veth end, so both directions lose packets as on a lossy wire. The
sender's output is this script's output; the script's own messages go to stderr.
Everything it made (processes, namespaces, the veth pair) is removed on every way out:
success, failure, Ctrl-C, SIGTERM, time limit.

Needs root and iproute2 (`ip`, `tc`); --delay needs the netem qdisc, --loss netem or
nftables (the `nft` command and nf_tables in the kernel). Standard library only, so it
runs under any Python 3.11+, with or without the venv active.
Exit status: the sender's (0 = migration completed), else the receiver's if it failed;
2 bad usage; 3 the link could not be built; 124 the time limit was hit; 128 + the signal
number when interrupted (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

SOURCE_ADDR = "198.18.0.1"
DESTINATION_ADDR = "198.18.0.2"
PREFIX_LEN = 30
SOURCE_DEV = "veth-src"
DESTINATION_DEV = "veth-dst"

EXIT_USAGE = 2
EXIT_LINK = 3
EXIT_TIME_LIMIT = 124

COMMAND_TIMEOUT_S = 20.0  # one ip/tc call; they take milliseconds
LISTEN_TIMEOUT_S = 60.0  # receiver start-up (imports, Numba cache load) until it listens
RECEIVER_GRACE_S = 30.0  # receiver exit after the sender has finished
STOP_GRACE_S = 5.0  # SIGINT -> SIGKILL

# A burst covering this much time at the link rate lets tbf catch up after its timer or
# the dequeuing CPU ran late (a noisy 2-core VM; 2 jiffies at HZ=250) instead of
# losing that link time for good, which would read as a slower link. Never less than a
# few GSO packets: veth hands tbf skbs of up to 64 KiB.
BURST_TIME_S = 0.008
MIN_BURST_BYTES = 256 << 10
# Queue bound, as time at the link rate; TCP small queues keep far less than this in the
# qdisc, so tbf never drops (a drop would show up as a slower link, not a shaped one).
TBF_LATENCY_MS = 50
NETEM_LIMIT_PACKETS = 100_000

# nftables loss: a table of this name in each namespace, whose chain on the veth end's
# ingress hook drops a packet when a random number mod NFT_LOSS_SCALE is below
# loss% x NFT_LOSS_SCALE / 100 (so the loss resolves to 0.0001%).
NFT_LOSS_TABLE = "precopy_loss"
NFT_LOSS_SCALE = 1_000_000
LOSS_BY = ("auto", "netem", "nft")

# How `precopy receive` may be told to listen without CURVE keys on a non-loopback
# address (it refuses otherwise); the first one its --help lists is used.
RECEIVE_OPT_IN_FLAGS = ("--insecure", "--allow-unauthenticated", "--unauthenticated")

NETEM_MISSING = (
    "the netem qdisc is not available in this kernel ({detail}); --delay (and --loss-by"
    " netem) need it"
    " (CONFIG_NET_SCH_NETEM, module sch_netem: try 'modprobe sch_netem'); --rate alone"
    " works with tbf, and --loss without --delay falls back to nftables where the nft"
    " command works"
)
NO_LOSS_MECHANISM = (
    "--loss needs the netem qdisc or nftables, and neither works here: netem: {netem};"
    " nftables: {nft} (load sch_netem, or install the nftables package with a kernel that"
    " has nf_tables)"
)


class LinkError(Exception):
    """The link could not be built or shaped; the message names the step."""


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# option values --------------------------------------------------------------------------
_RATE_UNITS = {  # tc's spelling: "bit" units are bits/s, "bps" units are BYTES/s
    "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
    "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12,
}
_TIME_UNITS = {"s": 1e6, "sec": 1e6, "ms": 1e3, "msec": 1e3, "us": 1.0, "usec": 1.0}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024,
               "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"


def parse_rate_bits_per_s(text: str) -> float:
    """tc rate ('1gbit', '100mbit', '125mbps' = bytes/s) -> bits per second."""
    m = re.fullmatch(_NUMBER + r"\s*([a-z]+)", text.strip().lower())
    if not m or m.group(2) not in _RATE_UNITS or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid rate {text!r}: expected a positive number with a tc unit"
            f" ({', '.join(_RATE_UNITS)}), e.g. --rate 1gbit")
    return float(m.group(1)) * _RATE_UNITS[m.group(2)]


def parse_delay_us(text: str) -> int:
    """One-way delay ('2ms', '500us', '0.01s') -> whole microseconds, > 0."""
    m = re.fullmatch(_NUMBER + r"\s*([a-z]+)", text.strip().lower())
    us = float(m.group(1)) * _TIME_UNITS[m.group(2)] if m and m.group(2) in _TIME_UNITS else 0
    if round(us) < 1:
        raise argparse.ArgumentTypeError(
            f"invalid delay {text!r}: expected a positive duration with a unit"
            f" (s, ms, us) of at least 1us, e.g. --delay 2ms")
    return round(us)


def parse_loss_pct(text: str) -> float:
    """Packet loss ('0.1%' or '0.1', percent) -> percent in (0, 100)."""
    m = re.fullmatch(_NUMBER + r"\s*%?", text.strip())
    if not m or not 0 < float(m.group(1)) < 100:
        raise argparse.ArgumentTypeError(
            f"invalid loss {text!r}: expected a percentage above 0 and below 100,"
            f" e.g. --loss 0.1%")
    return float(m.group(1))


def parse_size_bytes(text: str) -> int:
    """Size ('1MiB', '512k', '65536') -> bytes (k/m units are binary, as tc's)."""
    m = re.fullmatch(_NUMBER + r"\s*([a-z]*)", text.strip().lower())
    if not m or m.group(2) not in _SIZE_UNITS or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: expected a positive number of bytes, optionally with"
            f" KiB or MiB, e.g. --burst 1MiB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def _int_in(what: str, low: int, high: int, example: str):
    """An argparse type: an integer from low to high, refused with a message naming `what`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"invalid {what} {text!r}: expected an integer from {low} to {high}, e.g. {example}")
        return value
    return parse


parse_mtu = _int_in("MTU", 68, 65535, "--mtu 9000")  # veth MTU in bytes
parse_port = _int_in("port", 1, 65535, "--port 4000")


def parse_seconds(text: str) -> float:
    """Positive number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(
            f"invalid time limit {text!r}: expected a positive number of seconds,"
            f" e.g. --time-limit 120")
    return seconds


@dataclass(frozen=True)
class Shaping:
    """What tc applies to each direction of the link (both directions alike).

    rate_bits_per_s: tbf rate; None = unshaped.
    burst_bytes: tbf bucket size; None = BURST_TIME_S at the rate.
    delay_us: netem one-way delay (RTT = 2 x delay); None = none.
    loss_pct: random loss, percent; None = none.
    loss_by: what drops packets: "netem" (netem's loss) or "nft" (an nftables rule at
        the ingress of each veth end).
    """

    rate_bits_per_s: float | None = None
    burst_bytes: int | None = None
    delay_us: int | None = None
    loss_pct: float | None = None
    loss_by: str = "netem"

    @property
    def needs_netem(self) -> bool:
        return self.delay_us is not None or (self.loss_pct is not None and self.loss_by == "netem")

    @property
    def nft_loss(self) -> bool:
        return self.loss_pct is not None and self.loss_by == "nft"

    def nft_loss_threshold(self) -> int:
        """Drop when numgen random mod NFT_LOSS_SCALE is below this."""
        assert self.loss_pct is not None
        return round(self.loss_pct * NFT_LOSS_SCALE / 100)

    def tbf_burst_bytes(self) -> int:
        if self.burst_bytes is not None:
            return self.burst_bytes
        assert self.rate_bits_per_s is not None
        return max(MIN_BURST_BYTES, int(self.rate_bits_per_s / 8 * BURST_TIME_S))

    def describe(self) -> str:
        parts = []
        if self.rate_bits_per_s is not None:
            parts.append(f"tbf rate {_format_rate(self.rate_bits_per_s)}"
                         f" burst {self.tbf_burst_bytes()} B"
                         f" latency {TBF_LATENCY_MS}ms")
        if self.needs_netem:
            netem = []
            if self.delay_us is not None:
                netem.append(f"delay {self.delay_us / 1000:g}ms")
            if self.loss_pct is not None and not self.nft_loss:
                netem.append(f"loss {self.loss_pct:g}%")
            parts.append("netem " + " ".join(netem))
        if self.nft_loss:
            parts.append(f"nftables loss {self.loss_pct:g}% at ingress")
        if self.loss_pct is not None:
            parts.append("gso_max_segs 1")
        return ", ".join(parts) + " (each direction)" if parts else "unshaped"


def _format_rate(bits_per_s: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits_per_s >= scale:
            return f"{bits_per_s / scale:g} {unit}"
    return f"{bits_per_s:g} bit/s"


# commands ---------------------------------------------------------------------------------
def run(cmd: list[str], step: str, stdin: str | None = None) -> str:
    """Run one ip/tc/nft command; returns its output. LinkError naming the step and the
    command's complaint on failure."""
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, input=stdin,
                              timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise LinkError(f"{step}: {cmd[0]!r} not found (install iproute2)") from None
    except subprocess.TimeoutExpired:
        raise LinkError(f"{step}: {' '.join(cmd)} did not finish in {COMMAND_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise LinkError(f"{step}: {' '.join(cmd)}: {detail}")
    return done.stdout


def missing_tools() -> list[str]:
    """The commands this script needs that are not on PATH."""
    return [tool for tool in ("ip", "tc") if shutil.which(tool) is None]


def unique_tag() -> str:
    """A per-run name suffix: the PID keeps parallel runs apart, the random part keeps a
    run apart from leftovers of a killed run that had the same PID."""
    return f"{os.getpid()}-{secrets.token_hex(2)}"


def netns_problem() -> str | None:
    """Why network namespaces cannot be used here, or None if they can (probed by
    creating and deleting one)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and tc)"
    missing = missing_tools()
    if missing:
        return f"{' and '.join(missing)} not found (install iproute2)"
    return _probe_in_namespace(lambda name: None)


def _probe_in_namespace(attempt) -> str | None:
    """Create a throwaway namespace, call attempt(name) in it, delete it; the first
    LinkError as text, or None when everything worked."""
    name = f"precopy-probe-{unique_tag()}"
    try:
        run(["ip", "netns", "add", name], "creating a network namespace")
    except LinkError as error:
        return str(error)
    try:
        attempt(name)
        run(["ip", "netns", "del", name], "deleting a network namespace")
        return None
    except LinkError as error:
        return str(error)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=COMMAND_TIMEOUT_S)


def netem_problem() -> str | None:
    """Why the netem qdisc cannot be used, or None if it can (tried on lo of a throwaway
    namespace)."""
    return _probe_in_namespace(lambda name: run(
        ["tc", "-n", name, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], "adding netem"))


def netem_available() -> bool:
    """Whether this kernel has the netem qdisc."""
    return netem_problem() is None


def nft_loss_ruleset(dev: str, threshold: int) -> str:
    """The nftables table that drops packets arriving on dev at random. A first rule
    counts every packet, the second counts the ones it drops."""
    return (f"table netdev {NFT_LOSS_TABLE} {{\n"
            f"  chain ingress {{\n"
            f'    type filter hook ingress device "{dev}" priority 0; policy accept;\n'
            f"    counter\n"
            f"    numgen random mod {NFT_LOSS_SCALE} < {threshold} counter drop\n"
            f"  }}\n"
            f"}}\n")


def nft_problem() -> str | None:
    """Why the nftables loss cannot be used, or None if it can (the same table loaded on
    lo of a throwaway namespace)."""
    if shutil.which("nft") is None:
        return "the nft command is not installed (Debian/Ubuntu package nftables)"
    return _probe_in_namespace(lambda name: run(
        ["ip", "netns", "exec", name, "nft", "-f", "-"], "loading an nftables table",
        stdin=nft_loss_ruleset("lo", 1)))


def nft_available() -> bool:
    """Whether the nftables loss works here."""
    return nft_problem() is None


def choose_loss_by(shaping: Shaping, wanted: str) -> Shaping:
    """Settle what drops packets for --loss: netem when it works (or is asked for), else
    nftables; LinkError naming both when neither works. --delay always needs netem, so
    with --delay the loss goes to netem too (and its absence is reported at shaping)."""
    if shaping.loss_pct is None:
        return shaping
    if wanted == "netem" or (wanted == "auto" and shaping.delay_us is not None):
        return replace(shaping, loss_by="netem")
    if wanted == "auto":
        netem = netem_problem()
        if netem is None:
            return replace(shaping, loss_by="netem")
    nft_shaping = replace(shaping, loss_by="nft")
    if nft_shaping.nft_loss_threshold() < 1:
        nft = (f"--loss {shaping.loss_pct:g}% is below its resolution"
               f" ({100 / NFT_LOSS_SCALE:g}%)")
    else:
        nft = nft_problem()
    if nft is None:
        return nft_shaping
    if wanted == "nft":
        raise LinkError(f"--loss-by nft: {nft}")
    raise LinkError(NO_LOSS_MECHANISM.format(netem=netem, nft=nft))


class Link:
    """Two namespaces joined by a veth pair: create(), shape(), and remove() always.

    The pair is created directly inside the namespaces (never in the caller's), so
    deleting the namespaces removes it and nothing outlives the run.
    """

    def __init__(self, tag: str, mtu: int):
        self.source_ns = f"precopy-{tag}-src"
        self.destination_ns = f"precopy-{tag}-dst"
        self.mtu = mtu
        self._made: list[str] = []

    def create(self) -> None:
        """Make and address both ends; on any failure remove what was made and re-raise."""
        try:
            for ns in (self.source_ns, self.destination_ns):
                run(["ip", "netns", "add", ns], f"creating namespace {ns}")
                self._made.append(ns)
            run(["ip", "link", "add", SOURCE_DEV, "netns", self.source_ns, "mtu", str(self.mtu),
                 "type", "veth", "peer", "name", DESTINATION_DEV, "netns", self.destination_ns,
                 "mtu", str(self.mtu)], "creating the veth pair")
            for ns, dev, addr in ((self.source_ns, SOURCE_DEV, SOURCE_ADDR),
                                  (self.destination_ns, DESTINATION_DEV, DESTINATION_ADDR)):
                run(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev],
                    f"addressing {dev}")
                run(["ip", "-n", ns, "link", "set", dev, "up"], f"bringing {dev} up")
                run(["ip", "-n", ns, "link", "set", "lo", "up"], f"bringing lo up in {ns}")
        except BaseException:
            self.remove()
            raise

    def shape(self, shaping: Shaping) -> None:
        """Apply the shaping to the egress of both ends (and, for the nftables loss, to
        the ingress of both ends: a packet lost on its way to the peer)."""
        for ns, dev in ((self.source_ns, SOURCE_DEV), (self.destination_ns, DESTINATION_DEV)):
            if shaping.loss_pct is not None:
                # One wire packet per skb, so that a lost "packet" is one packet: veth
                # otherwise carries TSO/GSO skbs of up to 64 KiB, and netem or nftables
                # would drop them whole (a burst of up to 44 packets at MTU 1500).
                run(["ip", "-n", ns, "link", "set", "dev", dev, "gso_max_segs", "1"],
                    f"turning segmentation offload off on {dev}")
            _shape_device(ns, dev, shaping)
            if shaping.nft_loss:
                run(["ip", "netns", "exec", ns, "nft", "-f", "-"],
                    f"adding the nftables loss on {dev} in {ns}",
                    stdin=nft_loss_ruleset(dev, shaping.nft_loss_threshold()))

    def nft_loss_counts(self) -> list[tuple[str, int, int]]:
        """For the nftables loss: (direction, packets that arrived, packets dropped) per
        direction, read from the tables' counters; the directions it could not read are
        left out."""
        counts = []
        for ns, direction in ((self.destination_ns, "source -> destination"),
                              (self.source_ns, "destination -> source")):
            if ns not in self._made:
                continue
            try:
                listing = run(["ip", "netns", "exec", ns, "nft", "list", "table", "netdev",
                               NFT_LOSS_TABLE], "reading the nftables counters")
            except LinkError:
                continue
            packets = [int(n) for n in re.findall(r"counter packets (\d+)", listing)]
            if len(packets) == 2:
                counts.append((direction, packets[0], packets[1]))
        return counts

    def remove(self) -> list[str]:
        """Delete the namespaces made so far; returns the problems (empty if none)."""
        problems = []
        while self._made:
            ns = self._made.pop()
            try:
                run(["ip", "netns", "del", ns], f"deleting namespace {ns}")
            except LinkError as error:
                problems.append(str(error))
        return problems


def _shape_device(ns: str, dev: str, shaping: Shaping) -> None:
    tc = ["tc", "-n", ns, "qdisc", "add", "dev", dev]
    tbf = []
    if shaping.rate_bits_per_s is not None:
        tbf = ["tbf", "rate", f"{int(shaping.rate_bits_per_s)}bit",
               "burst", str(shaping.tbf_burst_bytes()), "latency", f"{TBF_LATENCY_MS}ms"]
    if not shaping.needs_netem:
        if tbf:
            run([*tc, "root", "handle", "1:", *tbf], f"shaping {dev} in {ns} (tbf)")
        return
    netem = ["netem", "limit", str(NETEM_LIMIT_PACKETS)]
    if shaping.delay_us is not None:
        netem += ["delay", f"{shaping.delay_us}us"]
    if shaping.loss_pct is not None:
        netem += ["loss", f"{shaping.loss_pct:g}%"]
    # netem at the root delays and drops; tbf as its child paces what leaves (the order
    # the netem documentation gives for rate + delay).
    try:
        run([*tc, "root", "handle", "1:", *netem], f"shaping {dev} in {ns} (netem)")
    except LinkError as error:
        text = str(error)
        if "unknown" in text.lower() or "failed to find" in text.lower():
            raise LinkError(NETEM_MISSING.format(detail=text.rsplit(": ", 1)[-1])) from None
        raise
    if tbf:
        run([*tc, "parent", "1:1", "handle", "10:", *tbf], f"shaping {dev} in {ns} (tbf under netem)")


# processes -----------------------------------------------------------------------------
def find_precopy(option: str | None) -> str:
    """--precopy, else $PRECOPY, else `precopy` on PATH, else next to this Python."""
    for candidate, origin in ((option, "--precopy"), (os.environ.get("PRECOPY"), "PRECOPY")):
        if candidate:
            path = shutil.which(candidate)
            if path is None:
                raise LinkError(f"{origin}={candidate!r} is not an executable")
            return os.path.abspath(path)
    path = shutil.which("precopy")
    if path is None:
        beside = Path(sys.executable).parent / "precopy"
        if beside.is_file() and os.access(beside, os.X_OK):
            path = str(beside)
    if path is None:
        raise LinkError("precopy not found: activate the venv, or give --precopy PATH or"
                        " PRECOPY=/path/to/precopy")
    return os.path.abspath(path)


def _listening(pid: int, addr: str, port: int) -> bool:
    """Whether the namespace of process pid has a TCP listener on addr:port
    (/proc/PID/net/tcp shows that process's namespace)."""
    host_order = int.from_bytes(bytes(map(int, addr.split("."))), "little")
    want = f"{host_order:08X}:{port:04X}"
    try:
        with open(f"/proc/{pid}/net/tcp") as table:
            next(table)
            return any(f[1] == want and f[3] == "0A" for f in map(str.split, table))
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return False


def _stop(proc: subprocess.Popen | None) -> None:
    """End a process group we started: SIGINT (precopy cancels cleanly), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def receive_opt_in(precopy: str) -> list[str]:
    """The option by which `precopy receive` accepts listening unauthenticated on a
    non-loopback address, if its --help lists one. Both ends sit in namespaces this script
    made, joined only to each other, so nobody else can reach the port; CURVE keys (given
    with --receive-option and passed on to send) are the choice on a shared network."""
    try:
        done = subprocess.run([precopy, "receive", "--help"], check=False, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return []
    for flag in RECEIVE_OPT_IN_FLAGS:
        if re.search(re.escape(flag) + r"(?![\w-])", done.stdout):
            return [flag]
    return []


def migrate(link: Link, precopy: str, port: int, send_args: list[str], receive_args: list[str],
            deadline: float, show_receiver: bool, drain: bool = False) -> int:
    """Run the receiver and the sender in the link's namespaces; returns the exit status.

    drain: the source runs `precopy drain` (its guests, K, cap in send_args) and the
    receiver `--serve`s them, stopped once the drain has ended."""
    endpoint = f"tcp://{DESTINATION_ADDR}:{port}"
    if drain:
        receive_args = ["--serve", *receive_args]
    receiver = sender = None
    with tempfile.TemporaryFile("w+") as receiver_log:
        try:
            # Own sessions, so that stopping one stops its whole process group and a
            # terminal's Ctrl-C reaches them only through us.
            receiver = subprocess.Popen(
                ["ip", "netns", "exec", link.destination_ns, precopy, "receive",
                 "--listen", endpoint, "--quiet", *receive_args],
                stdin=subprocess.DEVNULL, stdout=receiver_log, stderr=subprocess.STDOUT,
                start_new_session=True)
            ready_by = min(deadline, time.monotonic() + LISTEN_TIMEOUT_S)
            while not _listening(receiver.pid, DESTINATION_ADDR, port):
                if receiver.poll() is not None:
                    _echo_log(receiver_log, "receiver")
                    raise LinkError(f"precopy receive exited ({receiver.returncode}) before"
                                    f" listening on {endpoint}")
                if time.monotonic() > ready_by:
                    raise LinkError(f"precopy receive did not listen on {endpoint} in time")
                time.sleep(0.05)
            sender = subprocess.Popen(
                ["ip", "netns", "exec", link.source_ns, precopy, "drain" if drain else "send",
                 "--to", endpoint, *send_args], stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                send_status = sender.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print("netns_link: time limit reached; stopping the migration", file=sys.stderr)
                _stop(sender)
                return EXIT_TIME_LIMIT
            if drain:  # a serving receiver waits for more: stop it (idle, it exits 0)
                _stop(receiver)
                if show_receiver or receiver.returncode != 0:
                    _echo_log(receiver_log, "receiver")
                return send_status or receiver.returncode
            try:
                receive_status = receiver.wait(timeout=RECEIVER_GRACE_S if send_status == 0
                                               else STOP_GRACE_S)
                # A receiver that failed on its own has something to say; one stopped
                # because the sender gave up early (bad option, say) only says "cancelled".
                show_receiver = show_receiver or receive_status != 0
            except subprocess.TimeoutExpired:
                _stop(receiver)
                receive_status = receiver.returncode
                if send_status == 0:
                    print("netns_link: the receiver did not exit after the migration",
                          file=sys.stderr)
                    receive_status = receive_status or 1
                    show_receiver = True
            if show_receiver:
                _echo_log(receiver_log, "receiver")
            return send_status or receive_status
        finally:
            _ignore_signals()
            _stop(sender)
            _stop(receiver)


def _echo_log(log, name: str) -> None:
    log.flush()
    log.seek(0)
    for line in log.read().splitlines():
        print(f"{name}: {line}", file=sys.stderr)


# command line ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netns_link.py", allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Migrate between two network namespaces joined by a veth pair shaped with tc:\n"
            f"precopy receive listens on {DESTINATION_ADDR} in one, precopy send runs from"
            f" {SOURCE_ADDR} in\nthe other. Options not listed here (or everything after"
            " '--') go to 'precopy send'.\nNeeds root and iproute2; --delay needs the netem"
            " qdisc, --loss netem or else nftables (nft)."),
        epilog=(
            "examples:\n"
            "  scripts/netns_link.py --rate 1gbit --memory 1GiB --codec raw\n"
            "  scripts/netns_link.py --rate 10gbit --delay 1ms --loss 0.1% -- --json\n"
            "  scripts/netns_link.py --rate 1gbit --mtu 9000 --loss 1% -- --json\n"
            "  PRECOPY=.venv/bin/precopy scripts/netns_link.py --rate 1gbit --report run.json\n"))
    link = parser.add_argument_group("link (applied to both directions)")
    link.add_argument("--rate", type=parse_rate_bits_per_s, metavar="RATE",
                      help="tbf rate in tc units: 1gbit, 100mbit, 125mbps (bytes/s)"
                           " (default: unshaped)")
    link.add_argument("--burst", type=parse_size_bytes, metavar="SIZE",
                      help=f"tbf bucket size (default: {BURST_TIME_S * 1000:g} ms at the rate,"
                           f" at least {MIN_BURST_BYTES >> 10} KiB: 1 MB at 1gbit)")
    link.add_argument("--delay", type=parse_delay_us, metavar="TIME",
                      help="netem one-way delay per direction, e.g. 2ms (RTT = 2 x delay)")
    link.add_argument("--loss", type=parse_loss_pct, metavar="PCT",
                      help="random packet loss per direction, e.g. 0.1%%: netem's, or without"
                           " netem an nftables drop at the ingress of each end")
    link.add_argument("--loss-by", choices=LOSS_BY, default="auto",
                      help="what drops packets for --loss (default auto: netem if the kernel"
                           " has it, else nft)")
    link.add_argument("--mtu", type=parse_mtu, default=1500, help="veth MTU (default 1500)")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--port", type=parse_port, default=4000,
                           help="receiver control port (default 4000; the namespaces are"
                                " private, so it cannot clash)")
    run_group.add_argument("--precopy", metavar="PATH",
                           help="the precopy command (default: $PRECOPY, else precopy on PATH,"
                                " else next to this Python)")
    run_group.add_argument("--time-limit", type=parse_seconds, default=600.0, metavar="SECONDS",
                           help="stop the migration and clean up after this long (default 600)")
    run_group.add_argument("--receive-option", action="append", default=[], metavar="ARG",
                           help="one more argument for 'precopy receive' (repeat it; write"
                                " --receive-option=--capacity=2GiB for one that starts with -)")
    run_group.add_argument("--drain", action="store_true",
                           help="run 'precopy drain' instead of send (its options after '--': "
                                "--guests, --max-concurrent, ...) against a serving receiver")
    run_group.add_argument("--show-receiver", action="store_true",
                           help="print the receiver's output on stderr (always shown if it"
                                " fails)")
    return parser


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options, and the rest for precopy send (everything after '--' untouched)."""
    parser = build_parser()
    if "--" in argv:
        cut = argv.index("--")
        return parser.parse_args(argv[:cut]), argv[cut + 1:]
    return parser.parse_known_args(argv)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def _ignore_signals() -> None:
    # Once cleaning up, a second Ctrl-C must not cut the clean-up short.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    args, send_args = parse_args(sys.argv[1:] if argv is None else argv)
    shaping = Shaping(args.rate, args.burst, args.delay, args.loss)
    if args.burst is not None and args.rate is None:
        print("netns_link.py: error: --burst needs --rate", file=sys.stderr)
        return EXIT_USAGE
    if args.loss_by != "auto" and args.loss is None:
        print("netns_link.py: error: --loss-by needs --loss", file=sys.stderr)
        return EXIT_USAGE
    if args.loss_by == "nft" and args.delay is not None:
        print("netns_link.py: error: --loss-by nft cannot go with --delay (netem, which"
              " --delay needs, then drops packets too)", file=sys.stderr)
        return EXIT_USAGE
    deadline = time.monotonic() + args.time_limit
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)
    try:
        problem = netns_problem()
        if problem is not None:
            raise LinkError(problem)
        shaping = choose_loss_by(shaping, args.loss_by)
        precopy = find_precopy(args.precopy)
        # The opt-in is harmless when keys are given too: keys take precedence.
        receive_args = receive_opt_in(precopy) + args.receive_option
        link = Link(unique_tag(), args.mtu)
        try:
            link.create()
            link.shape(shaping)
            print(f"netns_link: {SOURCE_ADDR} ({link.source_ns}) -> {DESTINATION_ADDR}"
                  f" ({link.destination_ns}), mtu {args.mtu}, {shaping.describe()}",
                  file=sys.stderr)
            return migrate(link, precopy, args.port, send_args, receive_args, deadline,
                           args.show_receiver, args.drain)
        finally:
            _ignore_signals()
            if shaping.nft_loss:
                for direction, arrived, dropped in link.nft_loss_counts():
                    share = f" ({100 * dropped / arrived:.2f}%)" if arrived else ""
                    print(f"netns_link: nftables dropped {dropped} of {arrived} packets"
                          f" {direction}{share}", file=sys.stderr)
            for problem in link.remove():
                print(f"netns_link: {problem}", file=sys.stderr)
    except LinkError as error:
        print(f"netns_link: {error}", file=sys.stderr)
        return EXIT_LINK
    except Interrupted as signal_:
        print(f"netns_link: {signal_}: stopped and cleaned up", file=sys.stderr)
        return 128 + signal_.signum


if __name__ == "__main__":
    sys.exit(main())
