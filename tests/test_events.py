"""The long-blackout event: its threshold, its likely cause from the pass records, both ends' warning, the exit status."""

import dataclasses
import math

import pytest

from emulator.analysis import events
from emulator.analysis.report import DiskPass, PassRecord, Report
from emulator.dataplane.transport import DestinationLink, SourceLink
from emulator.shell.cli import main
from emulator.source.policy import PolicyConfig
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec
from tests.engines import Messages, run_pair

MB = 1e6


def record(pass_no, *, bandwidth=100 * MB, remaining_pages=0, threshold=30 * MB, pages=1000):
    return PassRecord(pass_no, pages, pages * 4096, pages * 4096, 0, pages * 4096 / bandwidth, bandwidth,
                      remaining_pages, 0.0, threshold, 0)


@pytest.mark.parametrize("given, limit, threshold", [(None, 0.3, 0.6), (1.0, 0.3, 1.0), (None, 40.0, 63.0),
                                                     (100.0, 0.3, 63.0)])
def test_the_threshold_is_twice_the_limit_or_as_given_and_never_past_63_s(given, limit, threshold):
    assert events.blackout_threshold_s(given, limit) == threshold


def test_not_converged_comes_first():
    passes = [record(0), record(1, remaining_pages=25_000, threshold=10 * 2**20)]
    cause = events.likely_cause(passes, "stalled", 100 * MB, 1, 1.0)
    assert cause == "not converged: pre-copy ended by stalled with 97.7 MiB dirty, 9.8x the 10.0 MiB that fit " \
                    "the downtime limit"


def test_a_pass_0_under_the_cap_is_cpu_bound():
    cause = events.likely_cause([record(0, bandwidth=60 * MB)], "converged", 100 * MB, 1, 1.0)
    assert cause == "CPU-bound: pass 0 ran at 60.0 MB/s, 60% of the 100 MB/s cap"
    assert events.cpu_bound(record(0, bandwidth=91 * MB), 100 * MB) is None  # within 90% of the cap
    assert events.cpu_bound(record(0, bandwidth=60 * MB), None) is None  # no cap, nothing to fall short of


def test_final_pages_slower_than_the_last_pass_mean_the_link_slowed():
    cause = events.likely_cause([record(0)], "converged", None, 50 * MB, 1.0)
    assert cause == "link slower than measured: the final pages crossed at 50.0 MB/s, the last pass measured 100 MB/s"
    assert events.likely_cause([record(0)], "converged", None, 95 * MB, 1.0).startswith("device state")


def _forced_long_blackout(tmp_path, *extra):
    """Two passes of a 32 MiB guest dirtied faster than the 20 MB/s cap: the blackout sends ~15 MiB, ~0.8 s."""
    path = tmp_path / "long.json"
    status = main(["migrate", "--memory", "32MiB", "--fill", "random", "--codec", "raw", "--pattern", "uniform",
                   "--dirty-rate", "30MB/s", "--max-bandwidth", "20MB/s", "--max-passes", "2",
                   "--blackout-warning", "200ms", "--quiet", "--report", str(path), *extra])
    return status, Report.read(path)


def test_a_forced_long_blackout_is_an_event_and_fails_the_run_only_when_asked(tmp_path, capsys):
    status, report = _forced_long_blackout(tmp_path)
    assert status == 0 and report.status == "completed"
    (event,) = report.events
    assert (event.name, event.threshold_s) == ("long-blackout", 0.2)
    assert event.measured_s == report.blackout.total_s > 0.2
    assert event.cause.startswith("not converged: pre-copy ended by max-passes with ")
    phase_starts = {phase.phase: phase.start_s for phase in report.phases}
    assert phase_starts["announce"] >= event.time_s >= phase_starts["blackout"]  # at the end of the blackout
    assert "warning      long-blackout: " in capsys.readouterr().out
    status, report = _forced_long_blackout(tmp_path, "--fail-on-warning")
    assert status == 3 and len(report.events) == 1


def test_a_blackout_within_the_threshold_is_no_event(tmp_path):
    path = tmp_path / "idle.json"
    assert main(["migrate", "--memory", "8MiB", "--dirty-rate", "0", "--quiet", "--fail-on-warning",
                 "--report", str(path)]) == 0
    assert Report.read(path).events == []


def test_both_ends_say_the_warning():
    said = {"source": Messages(), "destination": Messages()}
    scenario = Scenario(GuestSpec(4096 * 4096, fill="random"),
                        WorkloadSpec(rate_pages_per_s=math.inf, pattern="uniform"),
                        MigrationOptions(codec="raw", max_bandwidth_bytes_per_s=40e6, blackout_warning_s=0.01,
                                         policy=PolicyConfig(max_passes=1)))
    destination_link = DestinationLink("tcp://127.0.0.1:0", 10)
    source_link = SourceLink(destination_link.endpoint, 10)
    try:
        report, outcome, _, _ = run_pair(scenario, source_link, destination_link, progress=said["source"],
                                         destination_progress=said["destination"])
    finally:
        source_link.close()
        destination_link.close()
    assert report.status == outcome.status == "completed"
    for side, where in (("source", ""), ("destination", " here")):
        warnings = [text for text in said[side].texts if text.startswith("warning: the blackout lasted ")]
        assert len(warnings) == 1, (side, said[side].texts)
        assert f"{where}, past the 10.0 ms warning threshold (long-blackout); likely cause: " in warnings[0]


def test_a_mirrored_pass_0_under_the_cap_with_idle_cpus_is_storage_bound():
    disk = DiskPass(blocks_sent=100, bytes_sent=100 << 16, wire_bytes=100 << 16, zero_blocks=0, remaining_bytes=0,
                    writes_rate=0.0)
    first = dataclasses.replace(record(0, bandwidth=60 * MB), disk=disk, source_cpu_s=0.01, destination_cpu_s=0.02)
    assert events.pace_setter(first) == "storage"
    cause = events.likely_cause([first], "converged", 100 * MB, 1, 1.0)
    assert cause == "storage-bound: pass 0 ran at 60.0 MB/s, 60% of the 100 MB/s cap"
    busy = dataclasses.replace(first, destination_cpu_s=first.duration_s)  # a core's worth: the CPU it was
    assert events.pace_setter(busy) == "CPU"
    assert events.pace_setter(dataclasses.replace(first, disk=None)) == "CPU"  # memory only: as before
