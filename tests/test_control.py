"""A running migration's control socket: precopy status and precopy set, on real sockets."""

import os
import threading
import time

import numpy as np
import pytest

from emulator.analysis.text import format_summary
from emulator.running import control
from emulator.running.children import migrate
from emulator.shell.cli import main
from emulator.source.recorder import Recorder
from emulator.source.sender import Source
from emulator.source.streams import PassCount
from emulator.vm.guest import GuestMemory, GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import Workload, WorkloadSpec
from kernels import bitmap
from tests.fakelink import link_pair


class FakeSource:
    def __init__(self):
        self.changes = []

    def status(self):
        return {"phase": "precopy", "pass": 3}

    def change(self, name, value):
        self.changes.append((name, value))


@pytest.fixture
def served(tmp_path):
    source = FakeSource()
    with control.ControlServer(source, path=tmp_path / "1.ipc") as server:
        yield source, server.path


def test_status_and_set_are_answered_and_bad_requests_refused_naming_why(served):
    source, path = served
    assert control.ask(path, {"get": "status"}) == {"phase": "precopy", "pass": 3}
    assert control.ask(path, {"set": {"downtime_limit_s": 0.5, "max_bandwidth_bytes_per_s": None}}) == {"ok": True}
    assert source.changes == [("downtime_limit_s", 0.5), ("max_bandwidth_bytes_per_s", None)]
    for request, says in [({"set": {"channels": 4}}, "'channels' cannot be changed while a migration runs"),
                          ({"set": {"downtime_limit_s": -1}}, "downtime_limit_s"),
                          ({"set": {"downtime_limit_s": 0}}, "downtime_limit_s must be a number > 0 and finite, got 0"),
                          ({"set": {"max_bandwidth_bytes_per_s": 0}}, "max_bandwidth_bytes_per_s must be a number > 0, got 0 (or none: unlimited)"),
                          ({"set": {"max_bandwidth_bytes_per_s": "fast"}},
                           "max_bandwidth_bytes_per_s must be a number > 0, got 'fast' (or none: unlimited)"),
                          ({"set": {}}, 'expected {"get": "status"}'), ({"get": "everything"}, "expected"),
                          ([1, 2], "expected")]:
        answer = control.ask(path, request)
        assert says in answer["error"], (request, answer)
    assert len(source.changes) == 2  # nothing refused was applied


def test_a_running_migration_is_found_asked_and_adjusted_and_the_report_says_when():
    # a random 64 MiB guest capped at 10 MB/s: pass 0 would take about 6.7 s
    s = Scenario(GuestSpec(64 << 20, fill="random"), WorkloadSpec(rate_pages_per_s=0),
                 MigrationOptions(codec="raw", max_bandwidth_bytes_per_s=10e6))
    result = {}
    thread = threading.Thread(target=lambda: result.update(report=migrate(s)))
    thread.start()
    deadline = time.monotonic() + 30
    while os.getpid() not in control.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    path = control.running()[os.getpid()]
    while control.ask(path, {"get": "status"})["phase"] != "precopy" and time.monotonic() < deadline:
        time.sleep(0.05)
    status = control.ask(path, {"get": "status"})
    assert status["pass"] == 0 and status["max_bandwidth_bytes_per_s"] == 10e6 and status["total_pages"] == 16384
    assert control.ask(path, {"set": {"max_bandwidth_bytes_per_s": None, "downtime_limit_s": 1.0}}) == {"ok": True}
    thread.join(60)
    report = result["report"]
    # the cap was lifted mid-pass: at 10 MB/s the 64 MiB pass 0 would take 6.7 s
    assert report.status == "completed" and report.passes[0].duration_s < 0.6 * (64 << 20) / 10e6
    assert [(c.name, c.value, c.pass_no) for c in report.parameter_changes] == [
        ("max_bandwidth_bytes_per_s", None, 0), ("downtime_limit_s", 1.0, 0)]
    assert all(0 < c.time_s < report.passes[0].duration_s + 1 for c in report.parameter_changes)
    assert "set          downtime_limit_s to 1.00 s at" in format_summary(report)
    assert os.getpid() not in control.running()  # the socket went with the migration


def test_status_and_set_without_a_running_migration_have_nothing_to_talk_to_and_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # none of this user's other migrations
    assert main(["status"]) == 1
    assert capsys.readouterr().err == "precopy: error: no migrate or send of yours is running on this host\n"
    assert main(["set", "--downtime-limit", "1s"]) == 1
    assert capsys.readouterr().err == "precopy: error: no migrate or send of yours is running on this host\n"
    assert main(["set", "--pid", str(os.getpid()), "--downtime-limit", "1s"]) == 1
    assert capsys.readouterr().err == (f"precopy: error: --pid: no migration of yours runs as process {os.getpid()} "
                                       "(running: none)\n")


def test_set_without_a_change_or_with_a_zero_downtime_limit_is_a_usage_error(capsys):
    assert main(["set"]) == 2
    assert "set: give --downtime-limit or --max-bandwidth" in capsys.readouterr().err
    assert main(["set", "--downtime-limit", "0"]) == 2
    assert capsys.readouterr().err == ("precopy: error: --downtime-limit: must be a number > 0 and finite, got 0.0 "
                                       "(example: --downtime-limit 500ms)\n")


def test_a_migration_runs_without_a_control_socket_where_none_can_be_made(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(blocked))  # a file: no directory can be made under it
    server = control.ControlServer(FakeSource())
    server.close()  # nothing was bound, nothing to remove
    report = migrate(Scenario(GuestSpec(4 << 20), WorkloadSpec(rate_pages_per_s=0), MigrationOptions(codec="raw")))
    assert report.status == "completed"


def test_status_in_pass_0_counts_the_pages_not_yet_sent_as_remaining():

    s = Scenario(GuestSpec(1024 * 4096), WorkloadSpec(rate_pages_per_s=0))
    guest = GuestMemory(s.guest)
    source = Source(s, guest, Workload(guest, s.workload), link_pair()[0])
    source.record = Recorder(source.clock, source.progress)
    counter = source.record.unrecorded = PassCount()
    counter.memory.units = 640  # pass 0 has sent pages 0-639
    guest.harvest()
    bitmap.mark_dirty(guest.dirty, np.array([3, 5, 700], dtype=np.int64))  # two sent pages written again, one unsent
    assert source.status()["remaining_pages"] == 1024 - 640 + 2
