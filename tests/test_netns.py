"""Migrations over a real link: scripts/netns_link.py joins two network namespaces with a
tc-shaped veth pair and runs `precopy receive` in one, `precopy send` in the other.

Root only, and only where `ip`/`tc` exist and namespaces can be made; otherwise skipped
with the reason (the checks of the loss settings at the end need neither). Each run is
bounded by the script's --time-limit (it then stops the migration and removes what it
made) and, behind that, by a subprocess timeout.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "netns_link.py"
LINK_RATE_BYTES_PER_S = 125e6  # --rate 1gbit
SCRIPT_TIME_LIMIT_S = 40
RUN_TIMEOUT_S = 50  # the script's own limit comes first and cleans up
SMALL_IDLE_GUEST = ["--memory", "64MiB", "--fill", "random", "--codec", "raw",
                    "--dirty-rate", "0", "--channels", "1"]


def _load_script():
    spec = importlib.util.spec_from_file_location("netns_link", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


netns_link = _load_script()


def _precopy_command():
    """$PRECOPY, else the precopy installed beside this Python (CI's .venv need not be on
    PATH), else the one on PATH."""
    if os.environ.get("PRECOPY"):
        return os.environ["PRECOPY"]
    beside = Path(sys.executable).parent / "precopy"
    if beside.is_file():
        return str(beside)
    return shutil.which("precopy")


@pytest.fixture(scope="module")
def precopy():
    problem = netns_link.netns_problem()
    if problem is not None:
        pytest.skip(f"network namespaces unavailable: {problem}")
    command = _precopy_command()
    if command is None:
        pytest.skip("the precopy command is not installed (pip install -e .) and PRECOPY is unset")
    return command


@pytest.fixture(scope="module")
def netem(precopy):
    return netns_link.netem_available()


@pytest.fixture(scope="module")
def loss_by(precopy, netem):
    """What the script will drop packets with for --loss: netem, else nft; skip if
    neither works."""
    if netem:
        return "netem"
    problem = netns_link.nft_problem()
    if problem is not None:
        pytest.skip(f"no way to emulate loss: netem not available, and nftables: {problem}")
    return "nft"


def assert_cleaned_up(script_pid):
    """No namespace of that run of the script is left (it names them precopy-PID-...),
    and no nftables table of its name in this (the root) namespace."""
    listed = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True,
                            timeout=10).stdout.split()
    left = [name for name in listed if name.startswith(f"precopy-{script_pid}-")]
    assert not left, f"namespaces left behind: {left}"
    if shutil.which("nft"):
        tables = subprocess.run(["nft", "list", "tables"], check=False, capture_output=True,
                                text=True, timeout=10).stdout
        assert netns_link.NFT_LOSS_TABLE not in tables, f"nftables table left behind:\n{tables}"


def migrate_over_link(precopy, link_args, send_args, stderr_out=None):
    """Run the script; returns the sender's JSON report (and appends the script's stderr
    to stderr_out, if given).

    Asserts the run succeeded and that its namespaces are gone afterwards.
    """
    cmd = [sys.executable, str(SCRIPT), "--precopy", precopy, *link_args,
           "--time-limit", str(SCRIPT_TIME_LIMIT_S), "--", *send_args, "--quiet", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the script removes its namespaces on the way out.
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
        pytest.fail(f"netns_link.py did not finish in {RUN_TIMEOUT_S} s:\n{stderr}")
    assert_cleaned_up(proc.pid)
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{stderr}\n{stdout[-2000:]}"
    if stderr_out is not None:
        stderr_out.append(stderr)
    return json.loads(stdout)


def test_pass0_bandwidth_matches_a_1gbit_link(precopy, netem):
    """Pass 0 of an idle 64 MiB random guest (raw, one channel) over a 1 Gbit/s veth link
    moves wire bytes at the link rate, within 10%, and the copy is exact.

    With netem the link also gets 2 ms one-way delay; this kernel has no netem, so here
    the test runs rate-only (tbf). MTU 9000: with 1500 the TCP/IP and Ethernet headers
    take 4.4% of the link (goodput 119.5 MB/s at most), which would eat half the
    tolerance before any noise.
    """
    link = ["--rate", "1gbit", "--mtu", "9000"] + (["--delay", "2ms"] if netem else [])
    report = migrate_over_link(precopy, link, SMALL_IDLE_GUEST)
    assert report["status"] == "completed", report["reason"]
    assert report["digests_match"] is True
    assert report["source_digest"] == report["destination_digest"]
    pass0 = report["passes"][0]
    assert pass0["wire_bytes"] >= 64 << 20
    measured = pass0["bandwidth_bytes_per_s"]
    assert abs(measured / LINK_RATE_BYTES_PER_S - 1) <= 0.10, (
        f"pass 0 measured {measured / 1e6:.1f} MB/s on a {LINK_RATE_BYTES_PER_S / 1e6:g} MB/s link")


def test_lossy_link_still_migrates_exactly(precopy, loss_by):
    """A 1 Gbit/s link (MTU 1500) losing 1% of packets each way: TCP retransmits, and the
    migration of a guest being written throughout completes with identical memory.

    The loss is netem's where the kernel has it, else the script's nftables drop (here);
    either way one packet per skb (gso_max_segs 1). Here that run takes about 5 s: pass 0
    at about 30 to 55 MB/s (TCP recovering, and the CPU cost of unsegmented packets), about
    1000 packets dropped over both directions.
    """
    send = ["--memory", "64MiB", "--fill", "random", "--codec", "raw", "--pattern", "uniform",
            "--dirty-rate", "5000", "--channels", "2"]
    stderr = []
    report = migrate_over_link(precopy, ["--rate", "1gbit", "--loss", "1%"], send, stderr)
    assert report["status"] == "completed", report["reason"]
    assert report["digests_match"] is True
    assert report["source_digest"] == report["destination_digest"]
    assert report["passes"][0]["remaining_pages"] > 0  # written during the migration
    if loss_by == "nft":
        # The script reports its counters: packets were lost both ways, about 1% of them.
        drops = re.findall(r"nftables dropped (\d+) of (\d+) packets (source|destination) ->",
                           stderr[0])
        assert {direction for *_, direction in drops} == {"source", "destination"}, stderr[0]
        dropped = sum(int(d) for d, _, _ in drops)
        arrived = sum(int(a) for _, a, _ in drops)
        assert dropped > 0 and 0.5 <= 100 * dropped / arrived <= 1.5, stderr[0]


def test_missing_netem_is_named(precopy, netem):
    """Asking for delay where the kernel has no netem fails with a message saying so, and
    leaves nothing behind."""
    if netem:
        pytest.skip("netem is available here")
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--precopy", precopy, "--rate", "1gbit", "--delay", "2ms",
         "--time-limit", str(SCRIPT_TIME_LIMIT_S), "--", *SMALL_IDLE_GUEST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    assert_cleaned_up(proc.pid)
    assert proc.returncode == netns_link.EXIT_LINK, stderr
    assert "netem qdisc is not available" in stderr
    assert "--delay" in stderr


# loss settings: no root needed ------------------------------------------------------------
def test_loss_without_netem_or_nft_names_both(monkeypatch):
    """--loss where neither netem nor nftables works: one error naming both reasons."""
    monkeypatch.setattr(netns_link, "netem_problem", lambda: "no netem here")
    monkeypatch.setattr(netns_link, "nft_problem", lambda: "no nft here")
    with pytest.raises(netns_link.LinkError) as raised:
        netns_link.choose_loss_by(netns_link.Shaping(loss_pct=1.0), "auto")
    message = str(raised.value)
    assert "netem" in message and "nftables" in message
    assert "no netem here" in message and "no nft here" in message


def test_loss_falls_back_to_nft_only_without_netem(monkeypatch):
    monkeypatch.setattr(netns_link, "nft_problem", lambda: None)
    shaping = netns_link.Shaping(rate_bits_per_s=1e9, loss_pct=0.5)
    monkeypatch.setattr(netns_link, "netem_problem", lambda: None)
    assert netns_link.choose_loss_by(shaping, "auto").loss_by == "netem"
    assert netns_link.choose_loss_by(shaping, "nft").loss_by == "nft"
    monkeypatch.setattr(netns_link, "netem_problem", lambda: "no netem here")
    chosen = netns_link.choose_loss_by(shaping, "auto")
    assert chosen.loss_by == "nft" and chosen.nft_loss and not chosen.needs_netem
    # --delay needs netem whatever the loss uses, so the loss stays with netem.
    delayed = netns_link.Shaping(delay_us=2000, loss_pct=0.5)
    assert netns_link.choose_loss_by(delayed, "auto").loss_by == "netem"


def test_nft_loss_threshold_and_rule():
    """1% drops a packet when a random number mod 10^6 is below 10000; the rule hooks
    the ingress of the given device and counts what it drops."""
    shaping = netns_link.Shaping(loss_pct=1.0, loss_by="nft")
    assert shaping.nft_loss_threshold() == 10_000
    assert netns_link.Shaping(loss_pct=0.1, loss_by="nft").nft_loss_threshold() == 1_000
    ruleset = netns_link.nft_loss_ruleset("veth-dst", 10_000)
    assert 'hook ingress device "veth-dst"' in ruleset
    assert "numgen random mod 1000000 < 10000 counter drop" in ruleset


def test_nft_loss_below_its_resolution_is_refused(monkeypatch):
    monkeypatch.setattr(netns_link, "netem_problem", lambda: "no netem here")
    monkeypatch.setattr(netns_link, "nft_problem", lambda: None)
    with pytest.raises(netns_link.LinkError, match="resolution"):
        netns_link.choose_loss_by(netns_link.Shaping(loss_pct=0.00001), "nft")


def test_a_post_copy_link_cut_for_3_s_recovers_and_completes_with_matching_digests(precopy, tmp_path):
    """bench/postcopy_recovery.py: the veth taken down 0.3 s into post-copy for 3 s, with a 1 s timeout, so both
    ends see the link break; then a run without a cut. Each completes with matching digests; the cut one
    recovered once, having paused for less than the cut."""
    results = tmp_path / "recovery.json"
    done = subprocess.run([sys.executable, str(SCRIPT.parents[1] / "bench" / "postcopy_recovery.py"), "--cut", "3s",
                           "--json", str(results)], env={**os.environ, "PRECOPY": precopy}, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    cut, plain = json.loads(results.read_text())["runs"]
    assert (cut["status"], cut["digests_match"], cut["recoveries"]) == ("completed", True, 1)
    assert 0 < cut["paused_s"] < 3.0
    assert (plain["status"], plain["digests_match"], plain["recoveries"]) == ("completed", True, 0)
