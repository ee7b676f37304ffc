"""A guest disk: its spec's rules, its file on the source and the destination, and its writer on the mapping."""

import json
import math
import os
import time

import numpy as np
import pytest

from emulator.vm.disk import DiskError, DiskImage, DiskSpec, disk_problems, free_bytes
from emulator.vm.guest import MAX_PAGES, GuestMemory, GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import Workload, WorkloadSpec

PAGE = 4096
BLOCK = 16 << 10
FIX_DIR = "receive --disk-dir DIR names where mirrored disks go"


def file_bytes(path):
    """The file's bytes as read through the file system (not through any mapping of ours)."""
    with open(path, "rb") as disk_file:
        return np.frombuffer(disk_file.read(), dtype=np.uint8)


def reference_content(spec):
    """What a plain guest memory of the disk's geometry holds: the content a new disk file must have."""
    return GuestMemory(GuestSpec(spec.size_bytes, spec.block_size, spec.fill, spec.seed)).data


# --------------------------------------------------------------------------
# DiskSpec


@pytest.mark.parametrize("block_size", [4096, 8192, 64 << 10, 1 << 20])
def test_block_sizes_from_4_kib_to_1_mib_are_taken(block_size):
    spec = DiskSpec(4 * block_size, block_size)
    assert (spec.block_size, spec.n_blocks) == (block_size, 4)


@pytest.mark.parametrize("block_size, message", [
    (2048, "block_size must be a power of two >= 4096 bytes, got 2048"),
    (3 * 4096, "block_size must be a power of two >= 4096 bytes, got 12288"),
    (2 << 20, "block_size must be a power of two from 4.00 KiB to 1.00 MiB, got 2097152"),
    (0, "block_size must be a power of two >= 4096 bytes, got 0"),
    (True, "block_size must be a power of two >= 4096 bytes, got True"),
    (4096.0, "block_size must be a power of two >= 4096 bytes, got 4096.0"),
])
def test_other_block_sizes_are_refused(block_size, message):
    with pytest.raises(ValueError) as caught:
        DiskSpec(1 << 21, block_size)
    assert str(caught.value) == message


def test_the_size_must_be_a_multiple_of_the_block_size():
    with pytest.raises(ValueError) as caught:
        DiskSpec(3 * BLOCK + 4096, BLOCK)
    assert str(caught.value) == "size_bytes (the disk's size) must be a multiple of block_size (16.0 KiB), got 53248"
    with pytest.raises(ValueError, match="^size_bytes must be a size at least 1 B, got 0 B$"):
        DiskSpec(0, BLOCK)


def test_a_disk_has_at_most_2_to_the_32_blocks():
    assert DiskSpec(MAX_PAGES * 4096, 4096).n_blocks == MAX_PAGES
    with pytest.raises(ValueError, match="at most 4,294,967,296 blocks"):
        DiskSpec((MAX_PAGES + 1) * 4096, 4096)


@pytest.mark.parametrize("name", ["disk.img", "a", "_x", "A-b_c.9", "a..b", "x.part.img", "a" * 255])
def test_plain_file_names_are_taken(name):
    assert DiskSpec(name=name).name == name


@pytest.mark.parametrize("name", ["", "a/b", "/disk.img", "..", ".", ".hidden", "-x", "disk.img.part", ".part",
                                  "a" * 256, "disk img", "disk\n", "dísk", 7, None])
def test_names_that_are_no_plain_file_name_are_refused(name):
    with pytest.raises(ValueError, match="^name must be a file name of letters, digits"):
        DiskSpec(name=name)


@pytest.mark.parametrize("rate", [0.0, 1, 1e9, 1e12, math.inf])
def test_write_rates_from_idle_to_flat_out_are_taken(rate):
    assert DiskSpec(write_rate_bytes_per_s=rate).write_rate_bytes_per_s == rate


@pytest.mark.parametrize("rate", [-1, math.nan, "max", True, None, 1e12 * 1.001, 1e300])
def test_other_write_rates_are_refused(rate):
    with pytest.raises(ValueError, match=r"^write_rate_bytes_per_s must be a number in \[0, 1e\+12\], got "):
        DiskSpec(write_rate_bytes_per_s=rate)


def test_the_writer_writes_whole_blocks_at_the_rate_in_blocks():
    spec = DiskSpec(64 * BLOCK, BLOCK, write_rate_bytes_per_s=3 * BLOCK / 2, pattern="hotset", seed=9)
    assert spec.writer_spec() == WorkloadSpec(vcpus=1, rate_pages_per_s=1.5, pattern="hotset", write_size=BLOCK,
                                              seed=9)
    flat_out = DiskSpec(1 << 20, 1 << 20, write_rate_bytes_per_s=math.inf).writer_spec()
    assert flat_out.unpaced and flat_out.write_size == 1 << 20
    assert DiskSpec().writer_spec().rate_pages_per_s == 0.0


def mirrored(disk, **options):
    return Scenario(GuestSpec(64 * PAGE), WorkloadSpec(), MigrationOptions(storage="mirror", **options), disk=disk)


def test_a_disk_round_trips_through_the_scenario_dict_and_json_with_a_flat_out_writer():
    disk = DiskSpec(8 * BLOCK, BLOCK, fill="text", write_rate_bytes_per_s=math.inf, pattern="zipf", name="vm-1.raw",
                    seed=2**64 - 1)
    scenario = mirrored(disk)
    data = scenario.to_dict()
    assert data["disk"] == {"size_bytes": 8 * BLOCK, "block_size": BLOCK, "fill": "text",
                            "write_rate_bytes_per_s": "max", "pattern": "zipf", "name": "vm-1.raw",
                            "seed": 2**64 - 1}
    assert Scenario.from_dict(data) == scenario
    again = Scenario.from_dict(json.loads(json.dumps(data, allow_nan=False)))
    assert again == scenario and again.disk == disk and math.isinf(again.disk.write_rate_bytes_per_s)
    assert DiskSpec.from_dict(data["disk"]) == disk
    assert data["disk"]["write_rate_bytes_per_s"] == "max"  # from_dict did not change what it was given


def test_a_scenario_without_a_disk_round_trips_as_none():
    scenario = Scenario(GuestSpec(64 * PAGE))
    data = scenario.to_dict()
    assert data["disk"] is None and Scenario.from_dict(data) == scenario
    del data["disk"]  # a scenario written before disks existed has none
    assert Scenario.from_dict(data).disk is None


@pytest.mark.parametrize("disk, message", [
    ("disk.img", "malformed scenario: disk must be an object, got 'disk.img'"),
    ([1 << 20], "malformed scenario: disk must be an object, got [1048576]"),
    ({"size_bytes": 1 << 20, "colour": "red"}, "malformed scenario: DiskSpec.__init__() got an unexpected keyword "
                                               "argument 'colour'"),
])
def test_a_disk_that_is_not_an_object_of_known_keys_is_a_malformed_scenario(disk, message):
    data = mirrored(DiskSpec(8 * BLOCK, BLOCK)).to_dict()
    data["disk"] = disk
    with pytest.raises(ValueError) as caught:
        Scenario.from_dict(data)
    assert str(caught.value) == message


def test_a_disk_from_a_dict_keeps_its_rules():
    data = mirrored(DiskSpec(8 * BLOCK, BLOCK)).to_dict()
    data["disk"]["name"] = "../etc/passwd"
    with pytest.raises(ValueError, match="^name must be a file name"):
        Scenario.from_dict(data)
    data["disk"]["name"], data["disk"]["write_rate_bytes_per_s"] = "disk.img", "fast"
    with pytest.raises(ValueError, match=r"^write_rate_bytes_per_s must be a number in \[0, 1e\+12\], got .fast."):
        Scenario.from_dict(data)


def test_storage_mirror_needs_a_disk():
    with pytest.raises(ValueError, match="^storage mirror copies the guest's disk, and this guest has none"):
        Scenario(GuestSpec(64 * PAGE), WorkloadSpec(), MigrationOptions(storage="mirror"))
    with pytest.raises(ValueError, match="^storage must be one of shared, mirror, got 'copy'"):
        MigrationOptions(storage="copy")
    assert Scenario(GuestSpec(64 * PAGE), disk=DiskSpec(8 * BLOCK, BLOCK)).mirrored_disk is None  # shared


def test_the_largest_payload_holds_a_whole_block_when_batches_are_smaller():
    disk = DiskSpec(8 << 20, 1 << 20)
    scenario = mirrored(disk, batch_pages=4, device_state_bytes=1024)  # a memory batch is 16 KiB
    assert (scenario.disk_batch_blocks, scenario.largest_payload_bytes) == (1, 1 << 20)
    shared = Scenario(GuestSpec(64 * PAGE), WorkloadSpec(), MigrationOptions(batch_pages=4, device_state_bytes=1024),
                      disk=disk)
    assert shared.largest_payload_bytes == 4 * PAGE  # a shared disk's blocks never cross
    wide = mirrored(DiskSpec(64 * BLOCK, BLOCK), batch_pages=16, device_state_bytes=1024)  # 64 KiB = 4 blocks
    assert (wide.disk_batch_blocks, wide.largest_payload_bytes) == (4, 16 * PAGE)
    odd = mirrored(DiskSpec(64 * BLOCK, BLOCK), batch_pages=7, device_state_bytes=1024)  # 28 KiB: 1 block fits
    assert (odd.disk_batch_blocks, odd.largest_payload_bytes) == (1, 7 * PAGE)


# --------------------------------------------------------------------------
# DiskImage: the source's file


def test_a_new_disk_file_holds_the_content_profile(tmp_path):
    spec = DiskSpec(64 * BLOCK, BLOCK, fill="mixed", seed=7)
    path = str(tmp_path / "disk.img")
    disk = DiskImage.create(spec, path)
    try:
        reference = reference_content(spec)
        assert reference.any() and not reference.all()  # zero blocks and others: the comparison can fail
        assert os.path.getsize(path) == spec.size_bytes
        assert np.array_equal(file_bytes(path), reference)
        assert np.array_equal(disk.blocks.data, reference)
        assert (disk.path, disk.final_path, disk.blocks.page_size, disk.blocks.n_pages) == (path, None, BLOCK, 64)
        assert not np.array_equal(reference, reference_content(DiskSpec(64 * BLOCK, BLOCK, fill="mixed", seed=8)))
    finally:
        disk.close()


def test_a_disk_is_never_created_over_an_existing_file(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(b"the guest's real disk")
    with pytest.raises(DiskError) as caught:
        DiskImage.create(DiskSpec(4 * BLOCK, BLOCK), str(path))
    assert f"cannot create the guest disk {path}: it exists" in str(caught.value)
    assert path.read_bytes() == b"the guest's real disk" and os.listdir(tmp_path) == ["disk.img"]


def test_a_disk_in_a_missing_directory_is_refused_naming_the_path(tmp_path):
    path = tmp_path / "missing" / "disk.img"
    with pytest.raises(DiskError) as caught:
        DiskImage.create(DiskSpec(4 * BLOCK, BLOCK), str(path))
    assert str(caught.value) == f"cannot create the guest disk {path}: No such file or directory"
    assert os.listdir(tmp_path) == []


def test_a_disk_that_cannot_be_allocated_leaves_nothing_behind(tmp_path):
    path = tmp_path / "disk.img"
    with pytest.raises(DiskError) as caught:
        DiskImage.create(DiskSpec(1 << 50, 1 << 20), str(path))  # 1 PiB: no file system here holds it
    assert str(caught.value).startswith(f"cannot allocate 1.00 PiB for {path}: ")
    assert os.listdir(tmp_path) == []


def test_sync_writes_back_and_says_how_long(tmp_path):
    disk = DiskImage.create(DiskSpec(4 * BLOCK, BLOCK, fill="zero"), str(tmp_path / "disk.img"))
    try:
        disk.blocks.data[BLOCK : 2 * BLOCK] = 0xA5
        took_s = disk.sync()
        assert isinstance(took_s, float) and took_s >= 0
        assert disk.write_back_bytes_per_s is None  # none measured in the background yet
        disk.sync_in_background(BLOCK)
        disk.sync_in_background(2 * BLOCK)  # one is running or done: at most one write-back at a time
        expected = np.zeros(4 * BLOCK, dtype=np.uint8)
        expected[BLOCK : 2 * BLOCK] = 0xA5
        assert np.array_equal(file_bytes(disk.path), expected)
    finally:
        disk.close()  # joins the write-back
    assert disk.write_back_bytes_per_s > 0  # what the write-back carried, over its seconds


def test_each_write_back_carries_the_bytes_placed_since_the_last_one_began(tmp_path, monkeypatch):
    disk = DiskImage.create(DiskSpec(8 * BLOCK, BLOCK, fill="zero"), str(tmp_path / "disk.img"))
    monkeypatch.setattr(DiskImage, "sync", lambda image: 0.5)  # every write-back takes half a second
    rates = []
    try:
        for placed in (3 * BLOCK, 5 * BLOCK, 5 * BLOCK):  # the block bytes placed so far, after each pass
            disk.sync_in_background(placed)
            disk._join_sync()
            rates.append(disk.write_back_bytes_per_s)
    finally:
        disk.close()
    # 3 blocks, then the 2 placed since; nothing new the third time: the last measured rate stands
    assert rates == [3 * BLOCK / 0.5, 2 * BLOCK / 0.5, 2 * BLOCK / 0.5]


# --------------------------------------------------------------------------
# DiskImage: the destination's copy


def test_a_copy_arrives_as_a_zero_part_file_of_the_disk_size(tmp_path):
    spec = DiskSpec(32 * BLOCK, BLOCK, fill="random", name="vm.img")
    disk = DiskImage.receiving(spec, str(tmp_path))
    try:
        assert (disk.path, disk.final_path) == (str(tmp_path / "vm.img.part"), str(tmp_path / "vm.img"))
        assert os.listdir(tmp_path) == ["vm.img.part"]
        assert os.path.getsize(disk.path) == spec.size_bytes
        assert not file_bytes(disk.path).any() and not disk.blocks.data.any()  # the fill is the source's business
        assert disk.blocks.n_pages == 32 and disk.blocks.dirty_count() == 0
    finally:
        disk.discard()
    assert os.listdir(tmp_path) == []


def test_a_copy_already_arriving_is_refused_and_kept(tmp_path):
    part = tmp_path / "disk.img.part"
    part.write_bytes(b"another migration's blocks")
    with pytest.raises(DiskError) as caught:
        DiskImage.receiving(DiskSpec(4 * BLOCK, BLOCK), str(tmp_path))
    assert f"cannot receive the disk into {part}: it exists" in str(caught.value)
    assert part.read_bytes() == b"another migration's blocks" and os.listdir(tmp_path) == ["disk.img.part"]


def test_a_copy_into_a_missing_directory_or_without_room_leaves_nothing(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(DiskError) as caught:
        DiskImage.receiving(DiskSpec(4 * BLOCK, BLOCK), str(missing))
    assert str(caught.value) == f"cannot receive the disk into {missing / 'disk.img.part'}: No such file or directory"
    with pytest.raises(DiskError) as caught:
        DiskImage.receiving(DiskSpec(1 << 50, 1 << 20), str(tmp_path))
    assert str(caught.value).startswith(f"cannot allocate 1.00 PiB for {tmp_path / 'disk.img.part'}: ")
    assert os.listdir(tmp_path) == []


def test_commit_puts_the_copy_under_its_name_byte_for_byte_and_discard_removes_it(tmp_path):
    spec = DiskSpec(16 * BLOCK, BLOCK)
    disk = DiskImage.receiving(spec, str(tmp_path))
    written = np.random.default_rng(3).integers(0, 256, 3 * BLOCK, dtype=np.uint8)
    disk.blocks.data[2 * BLOCK : 4 * BLOCK] = written[: 2 * BLOCK]
    disk.blocks.data[15 * BLOCK :] = written[2 * BLOCK :]
    expected = np.zeros(spec.size_bytes, dtype=np.uint8)
    expected[2 * BLOCK : 4 * BLOCK], expected[15 * BLOCK :] = written[: 2 * BLOCK], written[2 * BLOCK :]
    disk.sync_in_background(2 * BLOCK)
    took_s = disk.commit()
    final = str(tmp_path / "disk.img")
    assert isinstance(took_s, float) and took_s >= 0
    assert (disk.path, disk.final_path) == (final, None) and os.listdir(tmp_path) == ["disk.img"]
    assert np.array_equal(file_bytes(final), expected)
    disk.blocks.data[:BLOCK] = 1  # still the mapping of the committed file
    assert file_bytes(final)[:BLOCK].tolist() == [1] * BLOCK
    disk.discard()  # a guest that did not resume here keeps nothing here, committed or not
    assert os.listdir(tmp_path) == []


def test_commit_refuses_a_file_that_appeared_under_the_name_and_discard_spares_it(tmp_path):
    disk = DiskImage.receiving(DiskSpec(4 * BLOCK, BLOCK), str(tmp_path))
    (tmp_path / "disk.img").write_bytes(b"someone else's")
    with pytest.raises(DiskError) as caught:
        disk.commit()
    assert str(caught.value) == (f"cannot put the disk at {tmp_path / 'disk.img'}: a file appeared there during the "
                                 "migration")
    assert disk.path == str(tmp_path / "disk.img.part")  # still the copy: what discard removes
    disk.discard()
    assert os.listdir(tmp_path) == ["disk.img"] and (tmp_path / "disk.img").read_bytes() == b"someone else's"


def test_commit_refuses_a_dangling_symlink_that_appeared_under_the_name(tmp_path):
    disk = DiskImage.receiving(DiskSpec(4 * BLOCK, BLOCK), str(tmp_path))
    os.symlink("elsewhere", tmp_path / "disk.img")
    try:
        with pytest.raises(DiskError, match="a file appeared there during the migration"):
            disk.commit()
        assert os.readlink(tmp_path / "disk.img") == "elsewhere"
    finally:
        disk.discard()


# --------------------------------------------------------------------------
# disk_problems


def test_a_destination_without_a_disk_directory_takes_no_mirror():
    problems = disk_problems(DiskSpec(4 * BLOCK, BLOCK), None)
    assert [(p.field, p.text, p.fix) for p in problems] == [
        ("disk", "this destination takes no mirrored disks", f"use --storage shared, or {FIX_DIR}")]


@pytest.mark.parametrize("make", ["file", "missing"])
def test_a_disk_directory_that_is_no_directory(tmp_path, make):
    directory = tmp_path / "disks"
    if make == "file":
        directory.write_bytes(b"")
    problems = disk_problems(DiskSpec(4 * BLOCK, BLOCK), str(directory))
    assert [(p.field, p.text, p.fix) for p in problems] == [
        ("disk", f"the destination's disk directory {directory} is not a writable directory",
         f"create it, or {FIX_DIR}")]


@pytest.mark.parametrize("existing", ["file", "dangling symlink", "directory"])
def test_a_disk_whose_name_is_taken_on_the_destination(tmp_path, existing):
    taken = tmp_path / "vm.img"
    if existing == "file":
        taken.write_bytes(b"keep")
    elif existing == "directory":
        taken.mkdir()
    else:
        os.symlink("nowhere", taken)
    problems = disk_problems(DiskSpec(4 * BLOCK, BLOCK, name="vm.img"), str(tmp_path))
    assert [p.field for p in problems] == ["disk.name"]
    assert problems[0].text == f"disk.name: {taken} exists on the destination, which never overwrites a disk"


def test_a_disk_larger_than_the_free_space(tmp_path):
    (tmp_path / "vm.img").write_bytes(b"keep")
    spec = DiskSpec(1 << 50, 1 << 20, name="vm.img")  # 2**30 blocks: a valid disk, larger than any file system here
    assert spec.size_bytes > free_bytes(str(tmp_path))
    problems = disk_problems(spec, str(tmp_path))
    assert [p.field for p in problems] == ["disk.name", "disk.size_bytes"]  # every reason at once
    assert problems[1].text.startswith("disk.size_bytes is 1.00 PiB, above the ")
    assert problems[1].text.endswith(f" free in the destination's disk directory {tmp_path}")
    assert os.listdir(tmp_path) == ["vm.img"]  # nothing is made


def test_a_disk_that_fits_has_no_problem_and_nothing_is_made(tmp_path):
    assert disk_problems(DiskSpec(4 * BLOCK, BLOCK), str(tmp_path)) == []
    assert os.listdir(tmp_path) == []


def test_free_bytes_are_what_an_unprivileged_file_may_take(tmp_path):
    before = os.statvfs(tmp_path)
    free = free_bytes(str(tmp_path))
    after = os.statvfs(tmp_path)
    unprivileged = sorted(s.f_bavail * s.f_frsize for s in (before, after))
    assert unprivileged[0] <= free <= unprivileged[1]


# --------------------------------------------------------------------------
# The disk writer on the mapping


@pytest.mark.parametrize("n_blocks, block_size, rate_bytes_per_s", [
    (256, BLOCK, math.inf),  # flat out: every block is written, many times
    (1024, 4096, 512 * 4096),  # 512 blocks/s for 0.2 s: about a tenth of the blocks
])
def test_logged_blocks_are_exactly_the_dirty_blocks_and_the_file_is_the_mapping(tmp_path, n_blocks, block_size,
                                                                                rate_bytes_per_s):
    spec = DiskSpec(n_blocks * block_size, block_size, fill="mixed", write_rate_bytes_per_s=rate_bytes_per_s, seed=4)
    disk = DiskImage.create(spec, str(tmp_path / "disk.img"))
    try:
        disk.blocks.harvest()
        workload = Workload(disk.blocks, spec.writer_spec(), log_capacity=1 << 21)
        with workload:
            time.sleep(0.2)
        logged = workload.logged_pages()
        assert logged.size == workload.writes > 0  # the log held every write
        written = np.unique(logged)
        assert disk.blocks.harvest().tolist() == written.tolist()
        if math.isinf(rate_bytes_per_s):
            assert written.size == n_blocks
        else:
            assert 0 < written.size < n_blocks  # some blocks stay clean: the comparison can fail
        on_file = file_bytes(disk.path)
        assert np.array_equal(on_file, disk.blocks.data)
        # every written block was written whole (a write is consecutive words from a random start),
        # and every other block still holds its first content
        blocks = on_file.view(np.uint64).reshape(n_blocks, block_size // 8)
        steps = np.diff(blocks[written], axis=1)
        assert (steps == 1).all()
        untouched = np.setdiff1d(np.arange(n_blocks), written)
        first = reference_content(spec).reshape(n_blocks, block_size)
        assert np.array_equal(on_file.reshape(n_blocks, block_size)[untouched], first[untouched])
    finally:
        disk.close()


def test_a_destinations_copy_measures_its_storage_in_setup_and_stays_zero(tmp_path):
    spec = DiskSpec(16 * BLOCK, BLOCK)
    disk = DiskImage.receiving(spec, str(tmp_path))
    try:
        assert disk.write_back_bytes_per_s > 0  # a rate the first PASS_END can give
        assert not file_bytes(disk.path).any()
    finally:
        disk.discard()
