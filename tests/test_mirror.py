"""Shared-nothing migration: a guest disk mirrored alongside memory, its dirty blocks per pass, its faults."""

import math
import os

import numpy as np
import pytest

from emulator.disk import DiskImage, DiskSpec
from emulator.guest import GuestMemory
from emulator.policy import PolicyConfig
from emulator.receiver import DestinationLimits
from emulator.scenario import MigrationOptions, Scenario
from emulator.guest import GuestSpec
from emulator.workload import Workload, WorkloadSpec
from tests.engines import run_pair
from tests.fakelink import link_pair

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
                 policy=PolicyConfig(max_passes=4, downtime_limit_s=0.0))
    for run in range(3):
        report, outcome, disk, writer, received = migrate(s, tmp_path / str(run))
        assert report.status == "completed", report.reason
        assert report.switchover_reason == "max-passes" and len(report.passes) == 4
        assert report.blackout.final_disk_blocks > 0  # the disk writer really wrote to the end
        assert writer.writes > s.disk.n_blocks
        assert outcome.disk_path == str(received / "disk.img") and os.listdir(received) == ["disk.img"]
        assert np.array_equal(file_bytes(outcome.disk_path), disk.blocks.data)  # the paused source disk
        assert report.digests_match
        sent = sum(p.disk_blocks_sent for p in report.passes) + report.blackout.final_disk_blocks
        assert outcome.blocks_applied == sent and report.passes[0].disk_blocks_sent == s.disk.n_blocks
        job = report.block_job
        assert job.device == "disk.img" and job.offset == job.len == sent * BLOCK
        assert report.summary["disk"]["remaining"] == 0
        assert report.summary["disk"]["normal"] + report.summary["disk"]["duplicate"] == sent
        disk.close()


class RecordingBlocks(GuestMemory):
    """A disk's blocks whose harvests also note how far the writer's log had got (writer paused around it)."""

    def __init__(self, blocks, writer_of):
        super().__init__(blocks.spec, populate=False, data=blocks.data)
        self.dirty = blocks.dirty
        self.writer_of, self.harvests, self.log_marks = writer_of, [], [0]

    def harvest(self, out=None):
        writer = self.writer_of()
        was_paused = writer.paused  # the blackout's harvest: writers already stopped
        writer.pause()
        try:
            result = super().harvest(out)
            self.harvests.append(result.copy())
            self.log_marks.append(writer.logged_pages().size)
            return result
        finally:
            if not was_paused:
                writer.resume()


def test_each_pass_sends_exactly_the_blocks_written_since_the_previous_harvest(tmp_path):
    s = scenario(disk_rate=2000 * BLOCK, pattern="hotset", codec="raw",
                 policy=PolicyConfig(max_passes=6, downtime_limit_s=0.0, stall_passes=None),
                 max_bandwidth_bytes_per_s=40e6)
    (tmp_path / "source").mkdir()
    disk = DiskImage.create(s.disk, str(tmp_path / "source" / "disk.img"))
    holder = {}
    disk.blocks = RecordingBlocks(disk.blocks, lambda: holder["writer"])
    writer = holder["writer"] = Workload(disk.blocks, s.disk.writer_spec(), log_capacity=1 << 20)
    (tmp_path / "received").mkdir()
    report, outcome, _, _ = run_pair(s, *link_pair(), disk=disk, disk_writer=writer,
                                     limits=DestinationLimits(disk_dir=str(tmp_path / "received")))
    assert report.status == "completed", report.reason
    blocks = disk.blocks
    assert len(blocks.harvests) == len(report.passes) + 1  # one per pass after pass 0, and the blackout's
    log = writer.logged_pages()
    checked = 0
    for k in range(1, len(blocks.harvests)):
        written = np.unique(log[blocks.log_marks[k] : blocks.log_marks[k + 1]])
        assert blocks.harvests[k].tolist() == written.tolist()
        sent = report.passes[k].disk_blocks_sent if k < len(report.passes) else report.blackout.final_disk_blocks
        assert sent == written.size
        checked += written.size
    assert checked > 50  # the writer really wrote between harvests
    assert np.array_equal(file_bytes(outcome.disk_path), blocks.data)


def test_the_switchover_waits_for_the_disk_and_says_how_long(tmp_path):
    # idle memory fits a zero budget after pass 0; a disk written flat out never does
    s = scenario(disk_rate=math.inf, codec="raw", policy=PolicyConfig(max_passes=3, downtime_limit_s=0.0))
    report, outcome, disk, writer, received = migrate(s, tmp_path)
    assert report.status == "completed", report.reason
    assert [p.remaining_pages for p in report.passes] == [0, 0, 0]
    assert all(p.disk_remaining_bytes > 0 for p in report.passes)
    waits = [p.disk_wait_s for p in report.passes]
    assert waits[0] == 0 and waits[1:] == [p.duration_s for p in report.passes[1:]]
    assert report.block_job.wait_s == pytest.approx(sum(waits)) and not report.block_job.ready
    assert report.summary["disk"]["wait-time"] == pytest.approx(sum(waits) * 1e3)
    assert report.switchover_reason == "max-passes"


def test_shared_storage_moves_no_block(tmp_path):
    s = scenario(disk_rate=math.inf, storage="shared", codec="raw")
    report, outcome, disk, writer, received = migrate(s, tmp_path)
    assert report.status == "completed", report.reason
    assert writer.writes > 0  # the guest's I/O ran, on storage both hosts see
    assert report.block_job is None and "disk" not in report.summary
    assert all(p.disk_blocks_sent == 0 for p in report.passes) and report.blackout.final_disk_blocks == 0
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
