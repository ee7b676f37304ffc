import dataclasses
import json
import math
import platform
from pathlib import Path

import numpy
import pytest

from emulator.analysis.report import (
    PHASES,
    SCHEMA_VERSION,
    Blackout,
    CpuSummary,
    DestinationOutcome,
    DiskFinal,
    DiskPass,
    PassRecord,
    Phase,
    Postcopy,
    RamSummary,
    Report,
    Summary,
    host_info,
    summarize,
)
from emulator.analysis.text import format_parameter, format_summary
from emulator.source.policy import PolicyConfig
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec

PAGE_SIZE = 4096
TOTAL_PAGES = 1000


def make_passes():
    return [
        PassRecord(
            pass_no=0,
            pages_sent=1000,
            bytes_sent=4_096_000,
            wire_bytes=2_048_000,
            zero_pages=200,
            duration_s=2.0,
            bandwidth_bytes_per_s=1_024_000.0,
            remaining_pages=100,
            dirty_pages_rate=50.0,
            threshold_bytes=307_200.0,
            throttle_pct=0,
            source_cpu_s=0.003,
            destination_cpu_s=0.002,
        ),
        PassRecord(
            pass_no=1,
            pages_sent=100,
            bytes_sent=409_600,
            wire_bytes=204_800,
            zero_pages=10,
            duration_s=0.25,
            bandwidth_bytes_per_s=819_200.0,
            remaining_pages=20,
            dirty_pages_rate=80.0,
            threshold_bytes=245_760.0,
            throttle_pct=20,
        ),
    ]


def make_blackout():
    return Blackout(
        total_s=0.125,
        final_pages=20,
        final_bytes=81_920,
        final_wire_bytes=40_960,
        final_zero_pages=4,
        final_send_s=0.05,
        device_state_bytes=512,
        device_state_s=0.01,
        digest_check_s=0.02,
        resume_s=0.03,
    )


def make_report():
    passes, blackout = make_passes(), make_blackout()
    return Report(
        status="completed",
        reason=None,
        scenario=Scenario(GuestSpec(TOTAL_PAGES * PAGE_SIZE, seed=42), migration=MigrationOptions(codec="lz4")),
        host={"hostname": "source", "cpu_count": 8},
        passes=passes,
        phases=[Phase(name, float(i), float(i) + 0.5) for i, name in enumerate(PHASES)],
        blackout=blackout,
        switchover_reason="converged",
        digests_match=True,
        source_digest="ab" * 16,
        destination_digest="ab" * 16,
        summary=summarize(
            passes,
            blackout,
            status="completed",
            page_size=PAGE_SIZE,
            total_pages=TOTAL_PAGES,
            setup_s=0.5,
            total_s=3.0,
        ),
    )


def test_summarize_completed_run_by_hand():
    summary = summarize(
        make_passes(),
        make_blackout(),
        status="completed",
        page_size=PAGE_SIZE,
        total_pages=TOTAL_PAGES,
        setup_s=0.5,
        total_s=3.0,
    )
    assert summary == {
        "status": "completed",
        "total-time": 3000.0,
        "setup-time": 500.0,
        "downtime": 125.0,
        "expected-downtime": 100.0,  # 20 pages x 4096 B / 819200 B/s = 0.1 s
        "cpu-throttle-percentage": 20,
        "dirty-limit-throttle-time-per-round": 0.0,  # no dirty limit
        "passes": 2,
        "compression-ratio": 2.0,  # 1120 pages x 4096 B / 2293760 B
        "ram": {
            "transferred": 2_293_760,  # 2048000 + 204800 + 40960
            "remaining": 0,
            "total": 4_096_000,
            "duplicate": 214,  # 200 + 10 + 4
            "normal": 906,  # 1120 - 214
            "normal-bytes": 906 * 4096,
            "dirty-pages-rate": 80.0,
            "mbps": 7.340032,  # 2293760 x 8 bits / 2.5 s / 1e6
            "dirty-sync-count": 3,  # one per pass + the final one
            "pages-per-second": 448.0,  # 1120 / 2.5 s
            "precopy-bytes": 2_252_800,
            "downtime-bytes": 40_960,
            "page-size": 4096,
        },
        # pre-copy sent 4096000 + 409600 B = 4505600 B = 4505600 / 2**30 GiB; CPU 0.003 s and 0.002 s in pass 0
        "cpu": {"source-s-per-gib": 0.003 * 2**30 / 4_505_600, "destination-s-per-gib": 0.002 * 2**30 / 4_505_600},
    }


def test_summarize_failed_run_without_blackout():
    summary = summarize(
        make_passes(),
        None,
        status="failed",
        page_size=PAGE_SIZE,
        total_pages=TOTAL_PAGES,
        setup_s=0.5,
        total_s=2.5,
        expected_downtime_s=0.25,
        throttle_pct=30,
        dirty_sync_count=7,
    )
    assert summary["downtime"] is None
    assert summary["expected-downtime"] == 250.0
    assert summary["cpu-throttle-percentage"] == 30
    assert summary["ram"]["remaining"] == 20 * 4096
    assert summary["ram"]["transferred"] == 2_252_800
    assert summary["ram"]["downtime-bytes"] == 0
    assert summary["ram"]["dirty-sync-count"] == 7
    assert summary["ram"]["duplicate"] == 210
    assert summary["ram"]["mbps"] == 2_252_800 * 8 / 2.0 / 1e6


def test_summarize_nothing_sent():
    summary = summarize(
        [],
        None,
        status="cancelled",
        page_size=PAGE_SIZE,
        total_pages=TOTAL_PAGES,
        setup_s=0.0,
        total_s=0.0,
    )
    assert summary["ram"]["remaining"] == 4_096_000
    assert summary["compression-ratio"] is None
    assert summary["expected-downtime"] is None
    assert summary["ram"]["mbps"] == 0.0
    assert summary["ram"]["pages-per-second"] == 0.0
    assert summary["ram"]["dirty-sync-count"] == 0
    assert summary["cpu-throttle-percentage"] == 0


def test_summarize_refuses_bad_status():
    with pytest.raises(ValueError, match="invalid status 'done'"):
        summarize([], None, status="done", page_size=4096, total_pages=1, setup_s=0, total_s=1)


def test_round_trip_every_field():
    report = make_report()
    text = report.to_json()
    again = Report.from_json(text)
    assert again == report
    assert isinstance(again.passes[1], PassRecord)
    assert isinstance(again.phases[0], Phase)
    assert isinstance(again.blackout, Blackout)
    assert again.to_json() == text


def test_json_shape():
    data = json.loads(make_report().to_json())
    assert list(data)[:3] == ["schema", "status", "reason"]
    assert data["schema"] == SCHEMA_VERSION == 5
    assert data["phases"][2] == {"phase": "blackout", "start_s": 2.0, "end_s": 2.5}
    assert data["passes"][0]["pass_no"] == 0
    assert data["blackout"]["final_wire_bytes"] == 40_960
    assert data["summary"]["ram"]["dirty-sync-count"] == 3


def test_write_and_read(tmp_path):
    report = make_report()
    path = tmp_path / "report.json"
    report.write(path)
    assert Report.read(path) == report
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left


def test_minimal_report_round_trip():
    report = Report(status="failed", reason="destination refused: not enough memory")
    assert Report.from_json(report.to_json()) == report


def test_unknown_schema_version_refused():
    data = json.loads(make_report().to_json())
    data["schema"] = 6
    with pytest.raises(ValueError) as info:
        Report.from_json(json.dumps(data))
    assert str(info.value) == "unsupported report schema 6: this precopy reads schemas 1, 2, 3, 4, 5"
    with pytest.raises(ValueError, match="unsupported report schema 7"):
        Report(schema=7, status="completed")


def test_records_are_typed_end_to_end_and_read_back_equal():
    report = make_report()
    report.scenario = Scenario(workload=WorkloadSpec(rate_pages_per_s=math.inf, pattern="zipf", zipf_s=1.2))
    report.destination = DestinationOutcome("completed", digest="ab" * 16, endpoint="tcp://127.0.0.1:4000",
                                            pages_applied=1200, frames_refused=3)
    report.location = "host b, tcp://127.0.0.1:4000"
    data = json.loads(report.to_json())
    assert data["scenario"]["workload"]["rate_pages_per_s"] == "max"  # JSON has no infinity
    assert data["destination"]["pages_applied"] == 1200 and data["location"] == report.location
    again = Report.from_json(report.to_json())
    assert again == report and isinstance(again.scenario, Scenario)
    assert isinstance(again.destination, DestinationOutcome) and again.scenario.workload.unpaced


@pytest.mark.parametrize("scenario", [
    Scenario(),
    Scenario(GuestSpec(64 << 20, page_size=2 << 20, fill="random", seed=7),
             WorkloadSpec(rate_pages_per_s=math.inf, pattern="uniform", vcpus=4),
             MigrationOptions(codec="raw", channels=3, max_bandwidth_bytes_per_s=1e8, verify="full",
                              auto_converge=True, policy=PolicyConfig(max_passes=5, stall_passes=None))),
])
def test_scenario_round_trips_through_its_dict_and_json(scenario):
    assert Scenario.from_dict(scenario.to_dict()) == scenario
    assert Scenario.from_dict(json.loads(json.dumps(scenario.to_dict(), allow_nan=False))) == scenario


def test_a_schema_1_report_reads_back_upgraded():
    data = json.loads(make_report().to_json())
    data["schema"] = 1
    del data["destination"], data["location"]
    data["scenario"]["destination"] = {"status": "completed", "reason": None, "digest": "ab" * 16,
                                       "endpoint": "tcp://127.0.0.1:4000", "pages_applied": 5, "frames_refused": 0}
    for record in data["passes"]:
        record["pages_dirtied"] = record["remaining_pages"]
    report = Report.from_json(json.dumps(data))
    assert report.schema == SCHEMA_VERSION and report.destination == DestinationOutcome(
        "completed", digest="ab" * 16, endpoint="tcp://127.0.0.1:4000", pages_applied=5)
    assert report.scenario == make_report().scenario and report.passes == make_report().passes


def test_not_a_report_refused():
    with pytest.raises(ValueError, match="no 'schema' field"):
        Report.from_json('{"status": "completed"}')
    with pytest.raises(ValueError, match="no 'schema' field"):
        Report.from_json("[1, 2]")
    with pytest.raises(ValueError, match="invalid JSON"):
        Report.from_json("{")


def test_unknown_and_missing_fields_named():
    data = json.loads(make_report().to_json())
    data["passes"][1]["bogus"] = 1
    with pytest.raises(ValueError, match=r"report.passes\[1\]: unknown field\(s\) bogus"):
        Report.from_json(json.dumps(data))
    data = json.loads(make_report().to_json())
    del data["blackout"]["resume_s"]
    with pytest.raises(ValueError, match=r"report.blackout: missing field\(s\) resume_s"):
        Report.from_json(json.dumps(data))
    data = json.loads(make_report().to_json())
    data["extra"] = True
    with pytest.raises(ValueError, match=r"report: unknown field\(s\) extra"):
        Report.from_json(json.dumps(data))
    data = json.loads(make_report().to_json())
    data["passes"] = {}
    with pytest.raises(ValueError, match="report.passes: expected a JSON array"):
        Report.from_json(json.dumps(data))


def test_validation():
    with pytest.raises(ValueError, match="invalid report status 'ok'"):
        Report(status="ok")
    with pytest.raises(ValueError, match="unknown phase 'warmup'"):
        Phase("warmup", 0.0, 1.0)
    with pytest.raises(ValueError, match="phase 'setup' ends"):
        Phase("setup", 2.0, 1.0)


def test_non_finite_numbers_are_named():
    report = make_report()
    report.passes[0] = dataclasses.replace(report.passes[0], bandwidth_bytes_per_s=math.inf)
    with pytest.raises(ValueError, match=r"report.passes\[0\].bandwidth_bytes_per_s is not"):
        report.to_json()
    report = make_report()
    report.summary["ram"]["mbps"] = math.nan
    with pytest.raises(ValueError, match=r"report.summary.ram.mbps is not finite"):
        report.to_json()


def test_host_info():
    info = host_info()
    assert info["python"] == platform.python_version()
    assert info["platform"] == platform.platform()
    assert info["versions"]["numpy"] == numpy.__version__
    assert set(info["versions"]) == {"precopy", "numpy", "numba", "zmq", "lz4", "libzmq"}
    assert info["cpu_count"] >= 1
    assert isinstance(info["hostname"], str)
    json.dumps(info)  # JSON-ready


def test_format_summary_shows_no_compression_ratio_for_raw():
    report = make_report()
    report.scenario = Scenario(migration=MigrationOptions(codec="raw"))
    assert "compression ratio" not in format_summary(report)


def test_format_summary():
    text = format_summary(make_report())
    lines = text.splitlines()
    assert lines[0] == "status       completed"
    assert lines[1] == "total time   3.00 s (setup 500 ms)"
    assert lines[2] == "downtime     125 ms (expected 100 ms)"
    assert lines[3] == (
        "transferred  2.19 MiB on the wire at 918 kB/s, compression ratio 2.00"
    )
    assert lines[4] == "pages        906 normal, 214 zero, 3 harvests"
    assert lines[5] == "throttle     20%"
    assert lines[6] == "cpu          0.715 s per GiB moved on the source, 0.477 on the destination (pre-copy)"
    assert lines[8:11] == [
        "pass       sent       wire  remaining   bandwidth       dirty rate",
        "   0   3.91 MiB   1.95 MiB    400 KiB   1.02 MB/s       50 pages/s",
        "   1    400 KiB    200 KiB   80.0 KiB    819 kB/s       80 pages/s",
    ]
    assert lines[12:] == [
        "blackout     125 ms: 20 pages (40.0 KiB on the wire) in 50.0 ms",
        "             device state 512 B in 10.0 ms, digest check 20.0 ms, resume 30.0 ms",
        "switchover   converged",
        "digests      match (" + "ab" * 16 + ")",
    ]


def test_format_summary_of_a_bare_failure():
    report = Report(
        status="failed",
        reason="digest mismatch",
        digests_match=False,
        source_digest="aa",
        destination_digest="bb",
    )
    assert format_summary(report) == (
        "status       failed (digest mismatch)\n"
        "digests      MISMATCH (source aa, destination bb)"
    )
    assert format_summary(Report(status="cancelled")).splitlines()[-1] == (
        "digests      not compared"
    )


def test_written_report_has_ordinary_permissions(tmp_path):
    import os

    path = tmp_path / "run.json"
    make_report().write(path)
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask


@pytest.mark.parametrize("name, value, text", [("downtime_limit_s", 0.5, "500 ms"),
                                               ("max_bandwidth_bytes_per_s", 12.5e6, "12.5 MB/s"),
                                               ("max_bandwidth_bytes_per_s", None, "unlimited")])
def test_a_set_parameter_reads_in_its_unit(name, value, text):
    assert format_parameter(name, value) == text


def make_postcopy():
    return Postcopy(missing_pages=300, pages_requested=40, requested_sent=25, pushed_pages=275, requests=31,
                    wire_bytes=1_228_800, zero_pages=10, duration_s=0.6, last_page_s=0.58, blocktime_s=0.2,
                    vcpu_blocktime_s=[0.25, 0.3], destination_cpu_s=0.4)


def test_a_post_copy_is_counted_in_the_totals_as_qemu_counts_it_and_reads_back():
    passes, blackout, postcopy = make_passes(), make_blackout(), make_postcopy()
    plain = summarize(passes, blackout, status="completed", page_size=PAGE_SIZE, total_pages=TOTAL_PAGES,
                      setup_s=0.5, total_s=3.0)
    summary = summarize(passes, blackout, status="completed", page_size=PAGE_SIZE, total_pages=TOTAL_PAGES,
                        setup_s=0.5, total_s=3.0, postcopy=postcopy)
    ram = summary["ram"]
    assert ram["transferred"] == plain["ram"]["transferred"] + 1_228_800 and ram["postcopy-bytes"] == 1_228_800
    assert ram["normal"] == plain["ram"]["normal"] + 290 and ram["duplicate"] == plain["ram"]["duplicate"] + 10
    assert ram["postcopy-requests"] == 40 and summary["postcopy-blocktime"] == 200.0
    assert summary["postcopy-vcpu-blocktime"] == [250.0, 300.0] and "postcopy-blocktime" not in plain
    report = dataclasses.replace(make_report(), status="completed", summary=summary, postcopy=postcopy)
    again = Report.from_json(report.to_json())
    assert again == report and isinstance(again.postcopy, Postcopy)
    text = format_summary(report)
    assert "post-copy    300 pages missing at resume, the last there after 580 ms; 40 asked for in 31 requests" \
        in text and "vCPUs waited 250 ms, 300 ms (all at once 200 ms)" in text


def test_a_guest_lost_in_post_copy_is_a_status_of_its_own_and_a_schema_3_report_has_no_post_copy():
    lost = dataclasses.replace(make_report(), status="lost", reason="nothing from the source within 2 s")
    assert Report.from_json(lost.to_json()).status == "lost"
    data = json.loads(make_report().to_json())
    data["schema"] = 3
    del data["postcopy"]
    assert Report.from_json(json.dumps(data)).postcopy is None


def test_a_pass_cut_short_counts_its_pages_as_far_as_they_got():
    # a run cancelled in pass 0 after 10 pages (2 of them zero) in 20,000 wire bytes: no record holds them
    summary = summarize([], None, status="cancelled", page_size=PAGE_SIZE, total_pages=TOTAL_PAGES, setup_s=0.5,
                        total_s=1.0, unrecorded_wire_bytes=20_000, unrecorded_pages=10, unrecorded_zero_pages=2)
    assert (summary["ram"]["normal"], summary["ram"]["duplicate"]) == (8, 2)
    assert summary["ram"]["transferred"] == 20_000
    assert summary["compression-ratio"] == 10 * PAGE_SIZE / 20_000


def test_format_summary_gives_qemus_xbzrle_cache_figures():
    report = make_report()
    report.summary["xbzrle-cache"] = {"cache-size": 64 << 20, "bytes": 3 << 20, "pages": 12_000, "cache-miss": 300,
                                      "cache-miss-rate": 0.024, "encoding-rate": 15.6, "overflow": 7}
    assert ("xbzrle       12,000 pages as deltas (3.00 MiB), cache 64.0 MiB, 2% misses, encoding rate 15.6, "
            "7 overflows") in format_summary(report).splitlines()


def test_a_schema_4_report_reads_its_flat_disk_fields_as_the_disk_records():
    data = json.loads(make_report().to_json())
    data["schema"] = 4
    data["block_job"] = {"device": "disk.img", "len": 3 * 65536, "offset": 3 * 65536, "ready": True, "ready_s": 1.0,
                         "wait_s": 0.5, "sync_s": 0.25, "speed": 0}
    for number, record in enumerate(data["passes"]):
        del record["disk"]
        record.update(disk_blocks_sent=2 - number, disk_bytes_sent=(2 - number) * 65536, disk_wire_bytes=70_000,
                      disk_zero_blocks=0, disk_remaining_bytes=65536, disk_writes_rate=10.0, disk_wait_s=0.5 * number)
    del data["blackout"]["disk"]
    data["blackout"].update(final_disk_blocks=1, final_disk_zero_blocks=1, final_disk_wire_bytes=16,
                            disk_sync_s=0.25)
    report = Report.from_json(json.dumps(data))
    assert report.schema == 5
    assert [p.disk for p in report.passes] == [DiskPass(2 - n, (2 - n) * 65536, 70_000, 0, 65536, 10.0, 0.5 * n)
                                               for n in range(len(report.passes))]
    assert report.blackout.disk == DiskFinal(blocks=1, zero_blocks=1, wire_bytes=16, sync_s=0.25)
    assert json.loads(report.to_json())["passes"][0]["disk"]["blocks_sent"] == 2


def test_a_schema_4_report_without_a_mirror_has_no_disk_records():
    data = json.loads(make_report().to_json())
    data["schema"] = 4
    for record in data["passes"]:
        del record["disk"]
        record.update(disk_blocks_sent=0, disk_bytes_sent=0, disk_wire_bytes=0, disk_zero_blocks=0,
                      disk_remaining_bytes=0, disk_writes_rate=0.0, disk_wait_s=0.0)
    report = Report.from_json(json.dumps(data))
    assert all(p.disk is None for p in report.passes) and report.blackout.disk is None


def test_the_committed_schema_3_mirror_run_reads_back_with_its_disk_in_records():
    report = Report.read(Path(__file__).parent.parent / "bench" / "results" / "disk" / "mirror.json")
    data = json.loads((Path(__file__).parent.parent / "bench" / "results" / "disk" / "mirror.json").read_text())
    assert [p.disk.blocks_sent for p in report.passes] == [p["disk_blocks_sent"] for p in data["passes"]]
    assert report.blackout.disk.blocks == data["blackout"]["final_disk_blocks"]
    assert report.summary["disk"]["normal"] + report.summary["disk"]["duplicate"] == \
        sum(p.disk.blocks_sent for p in report.passes) + report.blackout.disk.blocks


def test_a_disk_record_with_an_unknown_field_is_named():
    data = json.loads(make_report().to_json())
    data["passes"][1]["disk"] = {"blocks_sent": 1, "bogus": 2}
    with pytest.raises(ValueError, match=r"report.passes\[1\].disk: unknown field\(s\) bogus"):
        Report.from_json(json.dumps(data))


def test_the_summary_has_exactly_the_keys_its_type_names():
    summary = make_report().summary
    for got, typed in ((summary, Summary), (summary["ram"], RamSummary), (summary["cpu"], CpuSummary)):
        assert typed.__required_keys__ <= set(got) <= typed.__required_keys__ | typed.__optional_keys__
