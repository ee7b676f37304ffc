"""Real migrations over TCP loopback: engines on ZeroMQ sockets, the child-process receiver, the CLI."""

import math
import json
import os
import re
import socket
import time

import numpy as np
import pytest

from emulator.analysis.report import Report
from emulator.dataplane.transport import DestinationLink, SourceLink
from emulator.running.children import migrate
from emulator.shell.cli import main
from emulator.source.policy import PolicyConfig
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec
from tests.engines import Messages, run_pair

PAGE = 4096


@pytest.mark.parametrize("codec", ["raw", "lz4"])
@pytest.mark.parametrize("channels", [1, 2])
def test_writers_flat_out_over_tcp_arrive_byte_identical(codec, channels):
    s = Scenario(GuestSpec(2048 * PAGE, fill="mixed", seed=1),
                 WorkloadSpec(vcpus=2, rate_pages_per_s=math.inf, pattern="uniform", seed=2),
                 MigrationOptions(codec=codec, channels=channels, timeout_s=10,
                                  policy=PolicyConfig(max_passes=3, downtime_limit_s=1e-9)))
    destination_link = DestinationLink("tcp://127.0.0.1:0", 10)
    source_link = SourceLink(destination_link.endpoint, 10)
    try:
        report, outcome, guest, destination = run_pair(s, source_link, destination_link)
    finally:
        source_link.close()
        destination_link.close()
    assert report.status == "completed", report.reason
    assert outcome.status == "completed" and report.digests_match
    assert report.blackout.final_pages > 0 and len(report.passes) == 3
    assert np.array_equal(destination.migrated, guest.data)
    assert report.blackout.total_s >= report.blackout.final_send_s + report.blackout.digest_check_s


def test_migrate_runs_the_receiver_in_a_child_process():
    s = Scenario(GuestSpec(4096 * PAGE, fill="mixed"), WorkloadSpec(rate_pages_per_s=20_000, pattern="hotset"))
    messages = Messages()
    report = migrate(s, progress=messages)
    child = re.fullmatch(r"receiver listening on (tcp://127\.0\.0\.1:\d+) \(pid (\d+)\)", messages.texts[0])
    assert child and int(child.group(2)) != os.getpid()
    assert messages.texts[-1] == f"guest running on the destination: host {socket.gethostname()}, {child.group(1)}"
    assert report.status == "completed" and report.digests_match
    assert report.destination.status == "completed" and report.destination.digest == report.source_digest
    assert report.summary["ram"]["total"] == 4096 * PAGE
    assert report.summary["setup-time"] > 0 and report.summary["downtime"] > 0


def test_cli_migrate_prints_a_report_that_reads_back(capsys, tmp_path):
    path = tmp_path / "run.json"
    status = main(["migrate", "--memory", "16MiB", "--dirty-rate", "5000", "--json", "--quiet", "--report", str(path)])
    printed = Report.from_json(capsys.readouterr().out)
    assert status == 0 and printed.status == "completed" and printed.digests_match
    assert Report.read(path).source_digest == printed.source_digest


def test_cli_dirty_rate_above_the_bandwidth_cap_stalls_and_aborts(capsys):
    status = main(["migrate", "--memory", "4MiB", "--fill", "random", "--codec", "raw", "--dirty-rate", "max",
                   "--downtime-limit", "20ms",
                   "--pattern", "uniform", "--max-bandwidth", "8MB/s", "--stall-passes", "2",
                   "--on-stall", "abort", "--json", "--quiet"])
    report = Report.from_json(capsys.readouterr().out)
    assert status == 1 and report.status == "failed" and report.switchover_reason == "stalled"
    assert len(report.passes) == 3 and report.blackout is None
    remaining = [p.remaining_pages for p in report.passes]
    assert min(remaining[1:]) >= remaining[0] * 0.9  # the dirty set never shrank
    assert report.destination.status == "failed"


def test_a_slow_warm_up_is_announced_as_compiling(monkeypatch):
    import numba

    from emulator.running import migration

    def compiling():  # Numba compiles something new, for longer than the notice's second
        numba.njit(lambda x: x + 1)(1)
        time.sleep(migration.COMPILE_NOTICE_AFTER_S + 0.3)

    monkeypatch.setattr(migration, "warm_up", compiling)
    said = []

    class Progress:
        def message(self, text):
            said.append(text)

    migration.ready_to_move_pages(Progress())
    assert said == ["compiling the data path's kernels (once per machine; Numba caches them)"]
    monkeypatch.setattr(migration, "warm_up", lambda: None)
    migration.ready_to_move_pages(Progress())
    assert len(said) == 1  # a quick warm-up says nothing


def test_json_stream_gives_interval_events_at_the_interval_and_parses_line_by_line(capsys):
    # a random 64 MiB guest at 20 MB/s: pass 0 lasts about 3.4 s, the writers are idle
    status = main(["migrate", "--memory", "64MiB", "--fill", "random", "--codec", "raw", "--dirty-rate", "0",
                   "--max-bandwidth", "20MB/s", "--json-stream", "--interval", "0.5"])
    lines = capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON event
    names = [event["event"] for event in events]
    assert status == 0 and names[0] == "start" and names[-1] == "end" and events[-1]["status"] == "completed"
    assert "blackout" in names and names.count("pass") == 1
    intervals = [event for event in events if event["event"] == "interval"]
    assert 5 <= len(intervals) <= 7, [round(event["elapsed_s"], 2) for event in intervals]
    gaps = [later["elapsed_s"] - earlier["elapsed_s"] for earlier, later in zip(intervals, intervals[1:])]
    assert all(0.45 <= gap <= 0.75 for gap in gaps), gaps
    assert [event["pages_sent"] for event in intervals] == sorted(event["pages_sent"] for event in intervals)
    assert all(event["firm"] and event["pass_pages"] == 16384 for event in intervals)  # idle writers: no guess
    assert 15e6 < intervals[len(intervals) // 2]["wire_bytes_per_s"] < 25e6


def test_json_stream_and_json_are_not_given_together(capsys):
    assert main(["migrate", "--memory", "4MiB", "--json", "--json-stream"]) == 2
    assert "--json-stream: give it or --json, not both" in capsys.readouterr().err


def test_migrate_allows_its_own_receiver_what_the_run_asks_beyond_a_destinations_defaults():
    # 64 channels and 80 vCPUs are above a receive's defaults (16, 64), and migrate has no option to raise them
    s = Scenario(GuestSpec(256 * 4096, fill="random"), WorkloadSpec(vcpus=80, rate_pages_per_s=800),
                 MigrationOptions(channels=64, batch_pages=4, timeout_s=10))
    report = migrate(s)
    assert report.status == "completed" and report.digests_match, report.reason
