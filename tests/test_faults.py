"""Faults in every phase: the source guest must come out running and unharmed every time.

The receiver (a real `precopy receive` process) is killed, or frozen (a cut
link looks the same from here), at the start of each phase before it could
resume the guest (setup, pre-copy, the blackout); the sender is killed mid
pre-copy. The source must fail within its timeout with its writers
running; a destination whose source died discards the partial guest.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from emulator.dataplane.transport import HEARTBEATS_PER_TIMEOUT, SOURCE_GONE, DestinationLink
from emulator.destination.receiver import Destination
from emulator.running.migration import run_source
from emulator.source.policy import PolicyConfig
from emulator.vm.guest import GuestMemory, GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import Workload, WorkloadSpec
from tests.cli_process import PrecopyProcess, as_from_a_terminal
from tests.engines import Messages, Observer, run_pair
from tests.fakelink import link_pair

TIMEOUT_S = 1.0
ACCEPTED = re.compile(r"accepted a 64\.0 MiB guest \(16,384 pages\)")


def scenario():
    # a capped link keeps pre-copy going long enough to be interrupted in each phase
    return Scenario(GuestSpec(8 << 20, fill="random", seed=1), WorkloadSpec(rate_pages_per_s=20_000, seed=2),
                    MigrationOptions(codec="raw", timeout_s=TIMEOUT_S, max_bandwidth_bytes_per_s=40e6,
                                     policy=PolicyConfig(max_passes=3, downtime_limit_s=1e-9)))


class StrikeAt(Observer):
    """Progress observer that hits the receiver when the source enters `phase`."""

    def __init__(self, receiver, target, signum):
        self.receiver, self.target, self.signum, self.struck = receiver, target, signum, False

    def phase(self, name, elapsed_s):
        if name == self.target and not self.struck:
            self.receiver.signal(self.signum)
            self.struck = True


@pytest.mark.parametrize("phase", ["setup", "precopy", "blackout"])
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP])
def test_receiver_lost_in_any_phase_leaves_the_source_running(phase, signum):
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--timeout", "1s", "--capacity", "64MiB")
    try:
        endpoint = receiver.wait_listening()
        s = scenario()
        guest = GuestMemory(s.guest)
        workload = Workload(guest, s.workload)
        strike = StrikeAt(receiver, phase, signum)
        started = time.monotonic()
        report = run_source(s, endpoint, guest=guest, workload=workload, progress=strike)
        took = time.monotonic() - started
    finally:
        receiver.signal(signal.SIGKILL)
        receiver.finish()
    assert strike.struck
    assert report.status == "failed" and report.reason
    assert report.digests_match is not True
    assert took < 15  # bounded by the timeouts, not hung
    # the guest resumed on the source, unless the source had handed it over (COMPLETE sent) before it knew:
    # then the destination may resume it, and its copy stays paused (here the destination never did)
    handed_over = "handover" in [p.phase for p in report.phases]
    assert workload.paused == handed_over


def test_sender_killed_mid_precopy_the_destination_discards_the_guest():
    link = DestinationLink("tcp://127.0.0.1:0", timeout_s=2.0)
    destination, ended = Destination(link), {}
    thread = threading.Thread(target=lambda: ended.update(outcome=destination.run(hello_timeout_s=60)), daemon=True)
    thread.start()
    try:
        sender = PrecopyProcess("send", "--to", link.endpoint, "--memory", "64MiB", "--fill", "random",
                                "--codec", "raw", "--max-bandwidth", "20MB/s", "--timeout", "1s", "--quiet")
        # pass 0 moves 64 MiB at 20 MB/s in about 3.4 s: strike once its first pages have landed
        deadline = time.monotonic() + 60
        while destination.pages_applied == 0 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        sender.signal(signal.SIGKILL)
        sender.finish()
        thread.join(15)
    finally:
        link.close()
    assert not thread.is_alive()
    outcome = ended["outcome"]
    # its heartbeat (every quarter of the timeout) finds the source's end gone, or the timeout passes first
    assert outcome.status == "failed" and ("nothing from the source" in outcome.reason
                                           or outcome.reason == SOURCE_GONE), outcome.reason
    assert outcome.digest is None and 0 < outcome.pages_applied < 16384
    assert destination.guest is None  # discarded, never resumed


@pytest.mark.parametrize("side", ["source", "destination"])
def test_sigterm_on_either_side_cancels_both(side):
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--timeout", "5s", "--json")
    endpoint = receiver.wait_listening()
    sender = PrecopyProcess("send", "--to", endpoint, "--memory", "64MiB", "--fill", "random", "--codec", "raw",
                            "--max-bandwidth", "20MB/s", "--timeout", "5s", "--json", "--quiet")
    receiver.wait_for(ACCEPTED)
    time.sleep(1.0)  # into pass 0, which takes about 3.4 s
    (sender if side == "source" else receiver).signal(signal.SIGTERM)
    sender_status, sender_out, sender_err = sender.finish()
    receiver_status, receiver_out, receiver_err = receiver.finish()
    report, outcome = json.loads(sender_out), json.loads(receiver_out)
    assert report["status"] == "cancelled" and outcome["status"] == "cancelled"
    assert f"on the {side}" in report["reason"] and f"on the {side}" in outcome["reason"]
    assert sender_status != 0 and receiver_status != 0
    assert "Traceback" not in sender_err + receiver_err


def test_ctrl_c_on_an_idle_serving_receiver_stops_it_with_status_0():
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve")
    receiver.wait_listening()
    receiver.signal(signal.SIGINT)
    status, out, err = receiver.finish()
    assert status == 0 and "Traceback" not in err and "no migration was in progress" in err
    assert "cancelled" not in out  # nothing was cancelled: no outcome is printed


def test_ctrl_c_on_a_receiver_waiting_for_its_one_source_is_a_cancel():
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0")
    receiver.wait_listening()
    receiver.signal(signal.SIGINT)
    status, _, err = receiver.finish()
    assert status == 130 and "Traceback" not in err


@pytest.mark.parametrize("after_s", [1.0, 2.0, 4.0])
def test_ctrl_c_early_in_migrate_ends_both_processes_without_a_traceback(after_s):
    migrate = PrecopyProcess("migrate", "--memory", "64MiB", "--max-bandwidth", "20MB/s", "--codec", "raw")
    time.sleep(after_s)  # while the receiver process starts, or in pass 0 (the parent has imported by 1 s)
    migrate.signal(signal.SIGINT)  # the whole process group, as a terminal's Ctrl-C
    status, _, err = migrate.finish()
    assert status == 130 and "Traceback" not in err, err[-2000:]


@pytest.mark.parametrize("after_s", [0.1, 0.2, 0.3])
def test_ctrl_c_while_the_command_loads_is_a_quiet_cancel(after_s):
    command = subprocess.Popen([sys.executable, "-c", "import sys; from emulator.shell.launch import main; sys.exit(main())",
                                "migrate", "--memory", "64MiB"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, preexec_fn=as_from_a_terminal)
    time.sleep(after_s)  # Python has started; the command line's imports are loading
    os.killpg(command.pid, signal.SIGINT)
    out, err = command.communicate(timeout=60)
    assert command.returncode == 130 and "Traceback" not in err and "cancelled" in err, err[-2000:]


@pytest.mark.parametrize("signum, reason", [
    (signal.SIGTERM, "destination aborted"),  # its ABORT, while the source sends on a capped link
    (signal.SIGINT, "destination aborted"),
    (signal.SIGKILL, "closed the connection"),  # no ABORT: its connection closing says it
])
def test_a_receiver_that_stops_mid_pass_is_known_to_the_source_within_a_second(signum, reason):
    # a 10 s timeout, which the source must not wait out: 64 MiB over 20 MB/s is seconds of pass 0
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--timeout", "10s")
    try:
        endpoint = receiver.wait_listening()
        s = Scenario(GuestSpec(64 << 20, fill="random", seed=1), WorkloadSpec(rate_pages_per_s=0),
                     MigrationOptions(codec="raw", timeout_s=10.0, max_bandwidth_bytes_per_s=20e6))
        ended = {}
        source = threading.Thread(target=lambda: ended.update(report=run_source(s, endpoint)))
        source.start()
        receiver.wait_for(ACCEPTED, 30)
        time.sleep(0.5)  # well into pass 0
        struck = time.monotonic()
        receiver.signal(signum)
        source.join(10)
        known_after_s = time.monotonic() - struck
    finally:
        receiver.signal(signal.SIGKILL)
        receiver.finish()
    report = ended["report"]
    assert report.status in ("failed", "cancelled") and reason in report.reason, report.reason
    assert known_after_s < 1.0, f"the source knew after {known_after_s:.2f} s"


@pytest.mark.parametrize("serve", [False, True], ids=["receive", "serve"])
@pytest.mark.parametrize("signum, reason", [
    (signal.SIGTERM, "source aborted: cancelled by the user on the source"),  # its ABORT
    (signal.SIGINT, "source aborted: cancelled by the user on the source"),
    (signal.SIGKILL, SOURCE_GONE),  # no ABORT: the destination's next heartbeat finds its end gone
])
def test_a_source_that_stops_mid_pass_is_known_to_the_destination_promptly(serve, signum, reason):
    """Within 1 s of an interruption; within a heartbeat interval (a quarter of the timeout) of SIGKILL."""
    timeout_s = 8.0
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--timeout", f"{timeout_s:g}s", "--json",
                              *(["--serve"] if serve else []))
    sender = None
    try:
        endpoint = receiver.wait_listening()
        outcomes = []  # (when it was printed, the outcome)
        reader = threading.Thread(target=lambda: outcomes.extend(
            (time.monotonic(), json.loads(line)) for line in receiver.proc.stdout if line.startswith("{")))
        reader.start()
        sender = PrecopyProcess("send", "--to", endpoint, "--memory", "64MiB", "--fill", "random", "--dirty-rate",
                                "0", "--codec", "raw", "--max-bandwidth", "20MB/s", "--timeout", f"{timeout_s:g}s")
        receiver.wait_for(ACCEPTED)
        time.sleep(1.0)  # into pass 0, which takes about 3.4 s
        struck = time.monotonic()
        sender.signal(signum)
        deadline = struck + timeout_s
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        for end in (sender, receiver):
            if end is not None:
                end.signal(signal.SIGKILL)
                end.proc.wait(30)
    assert outcomes and outcomes[0][1]["reason"] == reason, outcomes
    known_after_s = outcomes[0][0] - struck
    limit_s = timeout_s / HEARTBEATS_PER_TIMEOUT + 0.5 if signum == signal.SIGKILL else 1.0
    assert known_after_s < limit_s, f"the destination knew after {known_after_s:.2f} s"


def test_a_destination_silent_after_the_handover_leaves_the_source_paused_never_running_twice(monkeypatch):
    """COMPLETE sent, the destination takes longer than the source's timeout to verify and resume (a frozen
    process, a link cut for a while): the source fails but must not resume its copy, since the destination
    may resume (here it does). Exactly one side runs the guest."""
    from emulator.destination import receiver
    verify = receiver.Destination._verify_and_resume

    def slowly(destination, complete):
        time.sleep(TIMEOUT_S * 1.5)
        verify(destination, complete)

    monkeypatch.setattr(receiver.Destination, "_verify_and_resume", slowly)
    s = Scenario(GuestSpec(2 << 20, fill="random", seed=1), WorkloadSpec(rate_pages_per_s=2000, seed=2),
                 MigrationOptions(codec="raw", timeout_s=TIMEOUT_S))
    said, guest = Messages(), GuestMemory(s.guest)
    workload = Workload(guest, s.workload)
    report, outcome, guest, destination = run_pair(s, *link_pair(timeout_s=TIMEOUT_S), guest=guest,
                                                   workload=workload, progress=said)
    assert report.status == "failed" and "from the destination within 1 s" in report.reason, report.reason
    assert outcome.status == "completed"  # the guest runs there
    assert workload.paused  # and not here
    assert any("the source's copy stays paused" in text for text in said.texts), said.texts


def test_ctrl_c_after_the_handover_is_too_late_to_cancel(monkeypatch):
    """A Ctrl-C while the source waits for RESUMED: said, and the migration completes (the guest moved)."""
    from emulator.source import sender
    recv = sender.Source.recv_control
    interrupted = []

    def interrupted_once(source):
        if source.handed_over and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return recv(source)

    monkeypatch.setattr(sender.Source, "recv_control", interrupted_once)
    s = Scenario(GuestSpec(2 << 20, fill="random", seed=1), WorkloadSpec(rate_pages_per_s=2000, seed=2),
                 MigrationOptions(codec="raw", timeout_s=5.0))
    said = Messages()
    report, outcome, guest, destination = run_pair(s, *link_pair(timeout_s=5.0), progress=said)
    assert interrupted and report.status == "completed" and outcome.status == "completed", report.reason
    assert any(text.startswith("too late to cancel: ") for text in said.texts), said.texts


def test_ctrl_c_once_the_destination_resumed_leaves_the_migration_completed(monkeypatch):
    """After RESUMED (here during the source's own after-the-fact check) the guest has moved: not cancelled."""
    from emulator.source import sender

    def interrupted(source):
        raise KeyboardInterrupt

    monkeypatch.setattr(sender.Source, "_confirm_source_copy", interrupted)
    s = Scenario(GuestSpec(2 << 20, fill="random", seed=1), WorkloadSpec(rate_pages_per_s=2000, seed=2),
                 MigrationOptions(codec="raw", timeout_s=5.0))
    said = Messages()
    report, outcome, guest, destination = run_pair(s, *link_pair(timeout_s=5.0), progress=said)
    assert report.status == "completed" and outcome.status == "completed", report.reason
    assert "too late to cancel: the guest runs on the destination" in said.texts
