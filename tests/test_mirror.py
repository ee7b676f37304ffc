"""Shared-nothing migration: a guest disk mirrored alongside memory, its dirty blocks per pass, its faults."""

import dataclasses
import math
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from emulator.analysis.text import format_summary
from emulator.core.units import format_bytes
from emulator.dataplane.transport import SOURCE_GONE, DestinationLink
from emulator.destination.receiver import Destination, DestinationLimits
from emulator.running.migration import check, run_source
from emulator.shell import cli
from emulator.source import phases
from emulator.source.policy import PolicyConfig
from emulator.vm.disk import DiskError, DiskImage, DiskSpec
from emulator.wire import protocol
from emulator.wire.protocol import MsgType, RemoteProtocolError
from emulator.vm.guest import GuestMemory
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import Workload, WorkloadSpec
from tests.cli_process import PrecopyProcess
from tests.engines import run_pair
from tests.test_engines import RecordingGuest
from tests.fakelink import link_pair, wait_until

PAGE = 4096
BLOCK = 16 << 10


def scenario(*, disk_rate=0.0, rate=0.0, storage="mirror", disk_blocks=256, pattern="uniform", **migration):
    migration.setdefault("timeout_s", 5.0)
    return Scenario(GuestSpec(1024 * PAGE, fill="mixed", seed=5),
                    WorkloadSpec(vcpus=1, rate_pages_per_s=rate, pattern="uniform", seed=6),
                    MigrationOptions(storage=storage, **migration),
                    disk=DiskSpec(disk_blocks * BLOCK, BLOCK, fill="mixed", write_rate_bytes_per_s=disk_rate,
                                  pattern=pattern, seed=7))


def file_bytes(path):
    with open(path, "rb") as disk_file:
        return np.frombuffer(disk_file.read(), dtype=np.uint8)


def migrate(s, tmp_path, *, disk_writer_log=0, disk=None, limits=None, **options):
    """(report, outcome, source disk, its writer, destination directory) of one in-process migration."""
    source_dir, received = tmp_path / "source", tmp_path / "received"
    source_dir.mkdir(parents=True, exist_ok=True)
    received.mkdir(exist_ok=True)
    disk = disk or DiskImage.create(s.disk, str(source_dir / s.disk.name))
    writer = Workload(disk.blocks, s.disk.writer_spec(), log_capacity=disk_writer_log)
    report, outcome, _, _ = run_pair(s, *link_pair(), disk=disk, disk_writer=writer,
                                     limits=limits or DestinationLimits(disk_dir=str(received)), **options)
    return report, outcome, disk, writer, received


@pytest.mark.parametrize("codec, verify, channels", [("raw", "incremental", 1), ("lz4", "full", 3)])
def test_a_mirrored_disk_arrives_byte_identical_with_its_writer_flat_out(tmp_path, codec, verify, channels):
    s = scenario(disk_rate=math.inf, rate=math.inf, codec=codec, verify=verify, channels=channels,
                 policy=PolicyConfig(max_passes=4, downtime_limit_s=1e-9))
    for run in range(3):
        report, outcome, disk, writer, received = migrate(s, tmp_path / str(run))
        assert report.status == "completed", report.reason
        assert report.switchover_reason == "max-passes" and len(report.passes) == 4
        assert report.blackout.disk.blocks > 0  # the disk writer really wrote to the end
        assert writer.writes > s.disk.n_blocks
        assert outcome.disk_path == str(received / "disk.img") and os.listdir(received) == ["disk.img"]
        assert np.array_equal(file_bytes(outcome.disk_path), disk.blocks.data)  # the paused source disk
        assert report.digests_match
        sent = sum(p.disk.blocks_sent for p in report.passes) + report.blackout.disk.blocks
        assert outcome.blocks_applied == sent and report.passes[0].disk.blocks_sent == s.disk.n_blocks
        job = report.block_job
        assert job.device == "disk.img" and job.offset == job.len == sent * BLOCK
        assert report.summary["disk"]["remaining"] == 0
        assert report.summary["disk"]["normal"] + report.summary["disk"]["duplicate"] == sent
        disk.close()


def test_each_pass_sends_exactly_the_blocks_written_since_the_previous_harvest(tmp_path):
    s = scenario(disk_rate=2000 * BLOCK, pattern="hotset", codec="raw",
                 policy=PolicyConfig(max_passes=6, downtime_limit_s=1e-9, stall_passes=None),
                 max_bandwidth_bytes_per_s=40e6)
    (tmp_path / "source").mkdir()
    disk = DiskImage.create(s.disk, str(tmp_path / "source" / "disk.img"))
    blocks = RecordingGuest(disk.blocks.spec, populate=False, data=disk.blocks.data)  # the disk's own bytes and bits
    blocks.dirty, disk.blocks = disk.blocks.dirty, blocks
    writer = Workload(blocks, s.disk.writer_spec(), log_capacity=1 << 20)
    blocks.attach(writer)
    (tmp_path / "received").mkdir()
    report, outcome, _, _ = run_pair(s, *link_pair(), disk=disk, disk_writer=writer,
                                     limits=DestinationLimits(disk_dir=str(tmp_path / "received")))
    assert report.status == "completed", report.reason
    assert len(blocks.harvests) == len(report.passes) + 1  # one per pass after pass 0, and the blackout's
    log = writer.logged_pages()
    checked = 0
    for k in range(1, len(blocks.harvests)):
        written = np.unique(log[blocks.log_marks[k] : blocks.log_marks[k + 1]])
        assert blocks.harvests[k].tolist() == written.tolist()
        sent = report.passes[k].disk.blocks_sent if k < len(report.passes) else report.blackout.disk.blocks
        assert sent == written.size
        checked += written.size
    assert checked > 50  # the writer really wrote between harvests
    assert np.array_equal(file_bytes(outcome.disk_path), blocks.data)


def test_the_switchover_waits_for_the_disk_and_says_how_long(tmp_path):
    # idle memory fits a zero budget after pass 0; a disk written flat out never does
    s = scenario(disk_rate=math.inf, codec="raw", policy=PolicyConfig(max_passes=3, downtime_limit_s=1e-9))
    report, outcome, disk, writer, received = migrate(s, tmp_path)
    assert report.status == "completed", report.reason
    assert [p.remaining_pages for p in report.passes] == [0, 0, 0]
    assert all(p.disk.remaining_bytes > 0 for p in report.passes)
    waits = [p.disk.wait_s for p in report.passes]
    assert waits[0] == 0 and waits[1:] == [p.duration_s for p in report.passes[1:]]
    assert report.block_job.wait_s == pytest.approx(sum(waits)) and not report.block_job.ready
    assert report.summary["disk"]["wait-time"] == pytest.approx(sum(waits) * 1e3)
    assert report.switchover_reason == "max-passes"
    # the blackout sends the disk's dirty blocks too, and the destination writes its copy through at the
    # handover (the last pass's blocks and the blackout's, at the write-back rate its PASS_END gave): the
    # expectation counts both
    last = report.passes[-1].disk
    bandwidth = sum(p.total_bytes_sent for p in report.passes) / sum(p.duration_s for p in report.passes)
    rate = last.write_back_bytes_per_s  # measured in setup, then by each finished write-back
    send_s = last.remaining_bytes / bandwidth
    assert report.summary["expected-downtime"] == pytest.approx(
        (max(send_s, last.bytes_sent / rate) + last.remaining_bytes / rate) * 1e3)
    # the headline counts the disk's bytes with the memory's
    moved = report.summary["ram"]["transferred"] + report.summary["disk"]["transferred"]
    line = next(line for line in format_summary(report).splitlines() if line.startswith("transferred"))
    assert line.startswith(f"transferred  {format_bytes(moved)} on the wire at ")
    assert line.endswith(f"(memory {format_bytes(report.summary['ram']['transferred'])}, "
                         f"disk {format_bytes(report.summary['disk']['transferred'])})")


def test_the_expected_downtime_counts_the_destinations_write_through_at_the_rate_it_measured(tmp_path,
                                                                                             monkeypatch):
    def synced_at_1_mb_per_s(image, placed_bytes):  # every write-back finished and measured before PASS_END
        image.sync()
        image.write_back_bytes_per_s = 1e6

    monkeypatch.setattr(DiskImage, "sync_in_background", synced_at_1_mb_per_s)
    s = scenario(disk_rate=math.inf, codec="raw", policy=PolicyConfig(max_passes=3, downtime_limit_s=1e-9))
    report, *_ = migrate(s, tmp_path)
    assert report.status == "completed", report.reason
    assert [p.disk.write_back_bytes_per_s for p in report.passes] == [1e6] * 3
    last = report.passes[-1].disk
    bandwidth = sum(p.total_bytes_sent for p in report.passes) / sum(p.duration_s for p in report.passes)
    # the last pass's blocks are written back while the blackout's cross, then the blackout's blocks
    send_s, last_pass_s = last.remaining_bytes / bandwidth, last.bytes_sent / 1e6
    assert last_pass_s > send_s and last.remaining_bytes / 1e6 > 1  # seconds of write-through: the figure shows it
    assert report.summary["expected-downtime"] == pytest.approx((last_pass_s + last.remaining_bytes / 1e6) * 1e3)


def test_shared_storage_moves_no_block(tmp_path):
    s = scenario(disk_rate=math.inf, storage="shared", codec="raw")
    report, outcome, disk, writer, received = migrate(s, tmp_path)
    assert report.status == "completed", report.reason
    assert writer.writes > 0  # the guest's I/O ran, on storage both hosts see
    assert report.block_job is None and "disk" not in report.summary
    assert all(p.disk is None for p in report.passes) and report.blackout.disk is None
    assert outcome.blocks_applied == 0 and outcome.disk_path is None and os.listdir(received) == []


def test_a_disk_already_on_the_destination_is_refused_and_kept(tmp_path):
    s = scenario(codec="raw")
    (tmp_path / "received").mkdir()
    there = tmp_path / "received" / "disk.img"
    there.write_bytes(b"the destination's own disk")
    report, outcome, disk, writer, received = migrate(s, tmp_path)
    assert report.status == "failed" and "disk.img exists on the destination" in report.reason
    assert there.read_bytes() == b"the destination's own disk" and os.listdir(received) == ["disk.img"]
    assert np.array_equal(file_bytes(disk.path), GuestMemory(s.disk.blocks_spec()).data)  # the source disk is whole


def test_a_destination_that_takes_no_disks_refuses_a_mirror(tmp_path):
    report, outcome, disk, writer, received = migrate(scenario(codec="raw"), tmp_path, limits=DestinationLimits())
    assert report.status == "failed" and "takes no mirrored disks" in report.reason
    assert os.listdir(received) == []


def test_a_migration_that_fails_mid_mirror_leaves_no_file_on_the_destination(tmp_path):
    # writers faster than a tiny cap: pre-copy stalls and gives up (on-stall abort) with the mirror half done
    s = scenario(disk_rate=math.inf, rate=math.inf, codec="raw", max_bandwidth_bytes_per_s=20e6,
                 policy=PolicyConfig(stall_passes=2, downtime_limit_s=0.001, on_stall="abort"))
    report, outcome, disk, writer, received = migrate(s, tmp_path)
    assert report.status == "failed" and "stalled" in report.reason
    assert outcome.status == "failed" and outcome.disk_path is None
    assert os.listdir(received) == []  # the part file is gone, and nothing has the disk's name
    assert report.block_job.offset > 0 and report.block_job.len > report.block_job.offset
    writes = writer.writes
    assert np.array_equal(file_bytes(disk.path), disk.blocks.data)
    assert writes > 0


@pytest.mark.parametrize("verify", ["incremental", "full"])
def test_a_block_changed_behind_the_tracking_is_caught(tmp_path, verify):
    s = scenario(codec="raw", verify=verify)
    (tmp_path / "source").mkdir()
    disk = DiskImage.create(s.disk, str(tmp_path / "source" / "disk.img"))
    harvest = disk.blocks.harvest

    def tampering_harvest(out=None):
        harvested = harvest(out)
        disk.blocks.data[5 * BLOCK] ^= 0xFF  # after pass 0 sent block 5, and no dirty bit is set
        return harvested

    disk.blocks.harvest = tampering_harvest
    report, outcome, _, _, received = migrate(s, tmp_path, disk=disk)
    assert report.status == "failed"
    if verify == "full":  # the destination hashes its copy in the blackout and refuses to resume
        assert "disk digest mismatch" in report.reason and os.listdir(received) == []
    else:  # the paused source disk, re-hashed after the resume, is not what was sent
        assert "escaped the dirty-block tracking" in report.reason and report.digests_match is False


# real processes: a receiver killed mid-mirror, a source killed mid-mirror, refusals ahead of any copy --------
def test_a_receiver_killed_mid_mirror_leaves_the_source_guest_and_its_disk_running(tmp_path):
    received = tmp_path / "received"
    received.mkdir()
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--timeout", "1s", "--disk-dir",
                              str(received))
    s = scenario(disk_rate=200 * BLOCK, disk_blocks=1024, codec="raw", timeout_s=1.0, max_bandwidth_bytes_per_s=10e6)
    (tmp_path / "source").mkdir()
    disk = DiskImage.create(s.disk, str(tmp_path / "source" / "disk.img"))
    writer = Workload(disk.blocks, s.disk.writer_spec())
    try:
        endpoint = receiver.wait_listening()
        guest = GuestMemory(s.guest)
        workload = Workload(guest, s.workload)
        # 4 MiB of memory, then 16 MiB of disk at 10 MB/s: 0.8 s after setup the mirror is under way
        killer = threading.Thread(target=lambda: (wait_until(lambda: (received / "disk.img.part").exists(), 30),
                                                  time.sleep(0.8), receiver.signal(signal.SIGKILL)), daemon=True)
        killer.start()
        report = run_source(s, endpoint, guest=guest, workload=workload, disk=disk, disk_writer=writer)
        killer.join(5)
    finally:
        receiver.signal(signal.SIGKILL)
        receiver.finish()
    assert report.status == "failed" and "closed the connection" in report.reason, report.reason  # it went
    assert 0 < report.block_job.offset < report.block_job.len
    assert not writer.paused and writer.writes > 0  # the guest's I/O ran on at the source to the end
    assert not os.path.exists(received / "disk.img")  # nothing under the disk's name
    assert np.array_equal(file_bytes(disk.path), disk.blocks.data)  # the source's disk is the guest's, whole


def test_a_source_killed_mid_mirror_leaves_no_file_on_the_destination(tmp_path):
    received = tmp_path / "received"
    received.mkdir()
    link = DestinationLink("tcp://127.0.0.1:0", timeout_s=2.0)
    destination, ended = Destination(link, limits=DestinationLimits(disk_dir=str(received))), {}
    thread = threading.Thread(target=lambda: ended.update(outcome=destination.run(hello_timeout_s=60)), daemon=True)
    thread.start()
    try:
        sender = PrecopyProcess("send", "--to", link.endpoint, "--memory", "4MiB", "--disk", "64MiB",
                                "--disk-fill", "random", "--storage", "mirror", "--codec", "raw",
                                "--max-bandwidth", "20MB/s", "--timeout", "1s", "--quiet")
        wait_until(lambda: destination.blocks_applied > 0 or not thread.is_alive(), 60)
        sender.signal(signal.SIGKILL)
        sender.finish()
        thread.join(15)
    finally:
        link.close()
    outcome = ended["outcome"]
    # its heartbeat finds the source's end gone, or the timeout passes first
    assert outcome.status == "failed" and ("nothing from the source" in outcome.reason
                                           or outcome.reason == SOURCE_GONE), outcome.reason
    assert 0 < outcome.blocks_applied < 1024 and outcome.disk_path is None
    assert os.listdir(received) == []  # the part file went with the guest


def test_check_names_a_disk_the_destination_has_no_room_for(tmp_path):
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--disk-dir", str(tmp_path))
    try:
        endpoint = receiver.wait_listening()
        s = dataclasses.replace(scenario(), disk=DiskSpec(1 << 50, 1 << 20))  # 1 PiB: never made, only asked
        answer = check(s, endpoint)
    finally:
        receiver.signal(signal.SIGINT)
        receiver.finish()
    assert [problem.field for problem in answer.problems] == ["disk.size_bytes"]
    assert "free in the destination's disk directory" in answer.problems[0].text and os.listdir(tmp_path) == []


@pytest.mark.parametrize("make, expected", [
    (lambda path: None, "is not a writable directory"),
    (lambda path: path.write_bytes(b"mine"), "exists; precopy makes the guest's disk and never overwrites"),
])
def test_a_disk_path_that_cannot_be_made_is_refused_before_anything_runs(tmp_path, capsys, make, expected):
    path = tmp_path / "disk.img" if "exists" in expected else tmp_path / "missing" / "disk.img"
    make(path)
    assert cli.main(["migrate", "--memory", "1MiB", "--disk", "1MiB", "--disk-path", str(path), "--quiet"]) == 2
    assert expected in capsys.readouterr().err
    if path.exists():
        assert path.read_bytes() == b"mine"


def test_a_full_destination_disk_refuses_the_mirror_in_setup(tmp_path):
    """A real filesystem of 1 MiB (tmpfs, needs root): the space is reserved before ACCEPT, or refused."""
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        s = scenario(codec="raw")  # a 4 MiB disk
        with pytest.raises(DiskError, match="No space left on device"):
            DiskImage.receiving(s.disk, str(small))  # what setup does once the check passed
        assert os.listdir(small) == []
        report, outcome, disk, writer, received = migrate(s, tmp_path, limits=DestinationLimits(disk_dir=str(small)))
        assert report.status == "failed" and "free in the destination's disk directory" in report.reason
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.parametrize("rate, accepted", [(2.5e8, 2.5e8), (None, None), ("absent", None), (0, "refused"),
                                            (-1.0, "refused"), ("fast", "refused"), (True, "refused")])
def test_the_write_back_rate_a_destination_gives_is_checked(rate, accepted):
    body = {"pass": 0, "pages_applied": 0, "cpu_s": 0.0}
    if rate != "absent":
        body["disk_write_back_bytes_per_s"] = rate
    ack = protocol.Decoder().decode(protocol.encode_control(MsgType.PASS_END, 0, 0, body))
    if accepted == "refused":
        with pytest.raises(RemoteProtocolError) as refused:
            phases._write_back_rate(ack)
        assert refused.value.field == "body.disk_write_back_bytes_per_s"
    else:
        assert phases._write_back_rate(ack) == accepted
