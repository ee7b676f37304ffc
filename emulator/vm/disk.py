"""A guest disk: a real file of blocks, mapped into memory, with its dirty-block bitmap.

The blocks are a GuestMemory whose pages are the disk's blocks and whose bytes are
the file's (a shared mapping): the disk writer, the dirty bitmap, the batch encoder
and applier and the digests work on it exactly as on RAM, and the concurrency
contract is the same (write the block, then set its bit atomically).

Source: `DiskImage.create` writes a new file with the content profile and never
replaces an existing one. Destination: `DiskImage.receiving` makes `<name>.part` in
its disk directory, its space reserved at once (posix_fallocate: a full disk is a
refusal in setup, never a failed write mid-mirror), and only `commit` (fsync, then
rename) puts the verified disk under its final name; `discard` removes the part
file, so a failed migration leaves nothing under the final name.
"""

import mmap
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from emulator.core import fields
from emulator.core.units import format_bytes
from emulator.vm.guest import FILL_PROFILES, MAX_PAGES, GuestMemory, GuestSpec
from emulator.vm.verdict import Problem
from emulator.vm.workload import WorkloadSpec
from kernels.writers import PATTERNS

STORAGE_MODES = ("shared", "mirror")
MIN_BLOCK, MAX_BLOCK = 4096, 1 << 20
PART_SUFFIX = ".part"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}\Z")


def _block_size_rule(value):
    fields.power_of_two(MIN_BLOCK)(value)
    if value > MAX_BLOCK:
        raise ValueError(f"must be a power of two from {format_bytes(MIN_BLOCK)} to {format_bytes(MAX_BLOCK)}, "
                         f"got {value!r}")
    return value


def _name_rule(value):
    if not isinstance(value, str) or not _NAME.match(value) or value.endswith(PART_SUFFIX):
        raise ValueError(f"must be a file name of letters, digits, '.', '_' and '-' (at most 255, not starting "
                         f"with '.' or '-', not ending in {PART_SUFFIX}), got {value!r:.80}")
    return value


WRITE_BACK_PROBE_BYTES = 4 << 20  # a destination's copy measures its storage with this much, in setup
MAX_WRITE_RATE_BYTES_PER_S = 1e12  # a paced rate above this is no pace any storage keeps: ask for "max"


@dataclass(frozen=True)
class DiskSpec:
    """What a guest disk is, and how its writer (the guest's I/O) writes it.

    size_bytes: the disk's size, a multiple of block_size; block_size: the unit of a
    write and of dirty tracking (4 KiB to 1 MiB); fill: content profile (as memory's);
    write_rate_bytes_per_s: what the writer writes, at most MAX_WRITE_RATE_BYTES_PER_S (0 idle,
    inf flat out); pattern:
    which blocks it writes (as memory's writers); name: the file's name on the destination.
    seed: seeds the content and the writer.
    """

    size_bytes: int = 1 << 30
    block_size: int = 64 << 10  # QEMU's mirror granularity for a disk without a cluster size
    fill: str = "mixed"
    write_rate_bytes_per_s: float = 0.0
    pattern: str = "uniform"
    name: str = "disk.img"
    seed: int = 0

    RULES: ClassVar[dict] = {
        "size_bytes": fields.size(1),
        "block_size": _block_size_rule,
        "fill": fields.one_of(FILL_PROFILES),
        "write_rate_bytes_per_s": fields.unbounded(fields.real(0, MAX_WRITE_RATE_BYTES_PER_S), "flat out"),
        "pattern": fields.one_of(PATTERNS),
        "name": _name_rule,
        "seed": fields.whole(0, 2**64 - 1),
    }

    def __post_init__(self):
        fields.check(self, self.RULES)
        if self.size_bytes % self.block_size:
            raise ValueError(f"size_bytes (the disk's size) must be a multiple of block_size "
                             f"({format_bytes(self.block_size)}), got {self.size_bytes}")
        if self.n_blocks > MAX_PAGES:
            raise ValueError(f"a disk has at most {MAX_PAGES:,} blocks (block numbers are 32-bit on the wire)")

    @property
    def n_blocks(self):
        return self.size_bytes // self.block_size

    def blocks_spec(self):
        """The disk as a GuestSpec of block-sized pages."""
        return GuestSpec(self.size_bytes, self.block_size, self.fill, self.seed)

    def writer_spec(self):
        """The disk writer as a workload: one thread writing whole blocks at the configured rate."""
        return WorkloadSpec(vcpus=1, rate_pages_per_s=self.write_rate_bytes_per_s / self.block_size,
                            pattern=self.pattern, write_size=self.block_size, seed=self.seed)

    @classmethod
    def from_dict(cls, data):
        """From `asdict` output (a flat-out writer's rate as "max"); TypeError if not an object of known keys."""
        if not isinstance(data, dict):
            raise TypeError(f"disk must be an object, got {data!r:.80}")
        values = dict(data)
        if values.get("write_rate_bytes_per_s") == "max":
            values["write_rate_bytes_per_s"] = float("inf")
        return cls(**values)


class DiskError(Exception):
    """A disk file could not be made, written or put in place: the reason, naming the path."""


def _os_reason(action, path, error):
    return DiskError(f"cannot {action} {path}: {error.strerror or error}")


class DiskImage:
    """A disk file mapped into memory: `blocks` (a GuestMemory of its blocks) and where it lives.

    Made by `create` (the source's disk) or `receiving` (a destination's copy in progress).
    """

    def __init__(self, spec, path, descriptor, final_path=None, *, populate=False):
        self.spec, self.path, self.final_path = spec, path, final_path
        self._fd = descriptor
        self._map = _writable_mapping(descriptor, spec.size_bytes)
        self.blocks = GuestMemory(spec.blocks_spec(), populate=populate,
                                  data=np.frombuffer(self._map, dtype=np.uint8))
        self._syncing = None
        self._synced_bytes = 0  # of the block bytes placed, those a write-back has begun to carry
        self.write_back_bytes_per_s = None  # what the last finished write-back carried per second, once one did

    @classmethod
    def create(cls, spec, path):
        """A new disk file at `path` with the spec's content, written through to storage.

        DiskError if it cannot be created (it exists already: a guest disk is never overwritten)."""
        def made(descriptor):
            disk = cls(spec, path, descriptor, populate=True)
            disk.sync()
            return disk

        return _new_file(path, spec.size_bytes, "create the guest disk", "precopy never overwrites a file; remove "
                         "it or give another --disk-path", made)

    @classmethod
    def receiving(cls, spec, directory):
        """The destination's copy in progress: `<name>.part` in `directory`, zero, its space reserved.

        DiskError if it cannot be made (no room, not writable, or a migration of that disk is
        already arriving)."""
        final = os.path.join(directory, spec.name)
        part = final + PART_SUFFIX
        def made(descriptor):
            disk = cls(spec, part, descriptor, final_path=final)
            disk.measure_write_back()
            return disk

        return _new_file(part, spec.size_bytes, "receive the disk into", "another migration of this disk is "
                         "arriving, or one was interrupted: remove the file", made)

    def measure_write_back(self):
        """A first write-back rate, before any block has come: the first WRITE_BACK_PROBE_BYTES written (as
        zeros: the copy's content then) and synced, timed."""
        probe = min(WRITE_BACK_PROBE_BYTES, self.spec.size_bytes)
        self.blocks.data[:probe] = 0
        self._measured_sync(probe)

    def sync(self):
        """Write the mapped blocks through to storage (msync, then fsync); return the seconds it took."""
        started = time.monotonic()
        self._map.flush()
        os.fsync(self._fd)
        return time.monotonic() - started

    def sync_in_background(self, placed_bytes):
        """Start writing back what is dirty now, unless a write-back is still running: so the one in the
        blackout (commit) has only the last pass's blocks to write. placed_bytes: the block bytes placed so
        far; those a write-back carries, over its seconds, make write_back_bytes_per_s."""
        if self._syncing is None or not self._syncing.is_alive():
            carried, self._synced_bytes = placed_bytes - self._synced_bytes, placed_bytes
            self._syncing = threading.Thread(target=self._measured_sync, args=(carried,), name="disk-sync",
                                             daemon=True)
            self._syncing.start()

    def _measured_sync(self, carried_bytes):
        seconds = self.sync()
        if carried_bytes > 0 and seconds > 0:
            self.write_back_bytes_per_s = carried_bytes / seconds

    def commit(self):
        """Destination: put the verified copy under its final name, durably; return the seconds it took.

        The name is linked, never renamed over: whatever appeared under it (a file, a dangling
        link) is kept and the commit refused. DiskError if so or if storage fails; `discard`
        then removes the copy, wherever it is."""
        started = time.monotonic()
        try:
            self._join_sync()
            self.sync()
            os.link(self.path, self.final_path)
        except FileExistsError:
            raise DiskError(f"cannot put the disk at {self.final_path}: a file appeared there during the "
                            "migration") from None
        except OSError as error:
            raise _os_reason("write the disk", self.path, error) from None
        part, self.path, self.final_path = self.path, self.final_path, None
        try:
            os.unlink(part)
            _sync_directory(os.path.dirname(self.path) or ".")
        except OSError as error:
            raise _os_reason("put the disk at", self.path, error) from None
        return time.monotonic() - started

    def discard(self):
        """Destination: remove the copy, committed or not (the guest did not resume here: nothing of it stays)."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def close(self):
        """Unmap and close (the mapping goes when the last view of it does)."""
        self._join_sync()
        self.blocks = None
        try:
            self._map.close()
        except BufferError:  # a writer or a batch still views it: unmapped when they let go
            pass
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _join_sync(self):
        if self._syncing is not None:
            self._syncing.join()


MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14; Python names it from 3.12 on


def _writable_mapping(descriptor, size_bytes):
    """A shared mapping of the file, its pages in place and writable now, in setup (as guest memory is
    made resident). Unpopulated, a first write faults each page in (0.45 GB/s here); populated (MAP_POPULATE)
    each still takes a write fault (5-6.5 GB/s); populated for writing, 18-22 GB/s, for 0.1-0.2 s per GiB
    of setup (more for a machine's first gigabytes of page cache). Where the kernel lacks
    MADV_POPULATE_WRITE, MAP_POPULATE alone."""
    mapping = mmap.mmap(descriptor, size_bytes, flags=mmap.MAP_SHARED)
    try:
        mapping.madvise(MADV_POPULATE_WRITE)
        return mapping
    except OSError:  # before Linux 5.14
        mapping.close()
        return mmap.mmap(descriptor, size_bytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))


def _new_file(path, size_bytes, action, if_it_exists, made):
    """made(descriptor) for a file created at `path` (never over one) with `size_bytes` reserved; on any
    failure the file is gone again. DiskError "cannot {action} {path}", with `if_it_exists` when it exists."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise DiskError(f"cannot {action} {path}: it exists ({if_it_exists})") from None
    except OSError as error:
        raise _os_reason(action, path, error) from None
    try:
        _reserve(descriptor, size_bytes, path)
        return made(descriptor)
    except BaseException:
        os.close(descriptor)
        os.unlink(path)
        raise


def _reserve(descriptor, size_bytes, path):
    """Give the file its size with its blocks allocated now: a write into the mapping can then never
    meet a full disk (which would kill the process with SIGBUS)."""
    try:
        os.posix_fallocate(descriptor, 0, size_bytes)
    except OSError as error:
        raise _os_reason(f"allocate {format_bytes(size_bytes)} for", path, error) from None


def _sync_directory(directory):
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def free_bytes(directory):
    """Bytes an unprivileged file may still take in `directory`."""
    return shutil.disk_usage(directory).free


def writable_directory(path):
    """True if `path` is a directory this process may create files in."""
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def disk_problems(spec, directory):
    """Every reason the destination cannot mirror disk `spec` into `directory`: Problems (nothing is made)."""
    fix_dir = "receive --disk-dir DIR names where mirrored disks go"
    if directory is None:
        return [Problem("disk", "this destination takes no mirrored disks", f"use --storage shared, or {fix_dir}")]
    if not writable_directory(directory):
        return [Problem("disk", f"the destination's disk directory {directory} is not a writable directory",
                        f"create it, or {fix_dir}")]
    found = []
    final = os.path.join(directory, spec.name)
    if os.path.lexists(final):
        found.append(Problem("disk.name", f"disk.name: {final} exists on the destination, which never overwrites a "
                             "disk", "move it away, or give the guest's disk another name (--disk-path)"))
    free = free_bytes(directory)
    if spec.size_bytes > free:
        found.append(Problem("disk.size_bytes", f"disk.size_bytes is {format_bytes(spec.size_bytes)}, above the "
                             f"{format_bytes(free)} free in the destination's disk directory {directory}",
                             f"free space there, or {fix_dir}"))
    return found
