"""How this process takes memory: freed buffers kept, and guest memory only where the host can hold it.

Every received ZeroMQ message, LZ4 output and decompressed batch is a fresh
buffer of about 1 MiB. With glibc's defaults such a buffer is either mmap'ed
or carved from the heap top and trimmed back on free, so each one costs a
page fault per 4 KiB when it is first written: 256 faults per MiB, which on
a VM made LZ4 decompression run at a quarter of its speed here. Raising the
mmap and trim thresholds lets glibc reuse the same memory for the next
message. Guest memory itself (gigabytes) is still mmap'ed on its own.

A guest's memory is made resident when it is allocated (every page written), so an
end that promised it holds it: the kernel never finds it short later and kills a
process. `available_memory_bytes` is the one rule for what a guest may be given: the
least of MemAvailable and the room under this process's cgroup memory limits, less
MARGIN_BYTES. Each end checks it just before it allocates (`holding`); checks and
allocations in one process go one at a time, so each check sees the memory of the
last allocation resident.
"""

import contextlib
import ctypes
import ctypes.util
import os
import threading

from emulator.core.units import format_bytes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD_BYTES = 1 << 30

MEMINFO = "/proc/meminfo"
SELF_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"
MARGIN_BYTES = 256 << 20  # left free for what is not the guest: message buffers, the interpreter, the kernel
# (directory under CGROUP_ROOT, limit file, usage file, reclaimable page cache in memory.stat): cgroup v2, then v1
CGROUP_MEMORY = {"": ("", "memory.max", "memory.current", "inactive_file"),
                 "memory": ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")}

_tuned = False
_allocating = threading.Lock()  # one check-and-allocate at a time in this process


def keep_freed_buffers():
    """Tune glibc's malloc once per process; a no-op elsewhere. Returns True if tuned."""
    global _tuned
    if _tuned:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _tuned


# how much a guest may be given ------------------------------------------------------------------------------
class MemoryShortfall(ValueError):
    """A guest's memory (`field`, `needed_bytes`) is more than this host can hold now (`available_bytes`)."""

    def __init__(self, field, needed_bytes, available_bytes):
        self.field, self.needed_bytes, self.available_bytes = field, needed_bytes, available_bytes
        super().__init__(f"{self.text('this host')}: {self.fix('this host')}")

    def fix(self, host):
        """What to do about it, on `host` ("this host", "the destination")."""
        return f"free memory on {host}, or give the guest at most {format_bytes(self.available_bytes)}"

    def text(self, host):
        """What is short, naming the field and both figures; host: who cannot hold it ("this destination")."""
        needed, available = self.needed_bytes, self.available_bytes
        return (f"{self.field} is {format_bytes(needed)} ({needed} B), more than {host} can hold now: "
                f"{format_bytes(available)} ({available} B) available (MemAvailable and any cgroup memory limit, "
                f"less {format_bytes(MARGIN_BYTES)} kept free)")


def available_memory_bytes():
    """Memory this host can give a guest now: memory_room_bytes less MARGIN_BYTES, at least 0."""
    return max(0, memory_room_bytes() - MARGIN_BYTES)


def require_room(needed_bytes, field):
    """Raise MemoryShortfall naming `field` unless this host can give a guest `needed_bytes` more now."""
    available = available_memory_bytes()
    if needed_bytes > available:
        raise MemoryShortfall(field, needed_bytes, available)


@contextlib.contextmanager
def holding(needed_bytes, field):
    """require_room, then the caller allocates and writes its `needed_bytes` inside, before any other check of
    this process: the next one then sees them resident, gone from MemAvailable."""
    with _allocating:
        require_room(needed_bytes, field)
        yield


def memory_room_bytes():
    """Bytes that can be made resident before the kernel must reclaim by force: MemAvailable (all physical
    memory if unknown), or less where a cgroup enclosing this process has less room under its limit."""
    return min([_mem_available_bytes(), *_cgroup_rooms()])


def _mem_available_bytes():
    try:
        with open(MEMINFO) as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cgroup_rooms():
    """Limit less usage (page cache it would reclaim aside) of this process's memory cgroups and of every
    group above them, where a limit is set and readable."""
    try:
        with open(SELF_CGROUP) as groups:
            lines = groups.read().splitlines()
    except OSError:
        return []
    rooms = []
    for line in lines:  # hierarchy:controllers:path; v2's controllers are empty
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        for controller in controllers.split(",") if controllers else [""]:
            if controller in CGROUP_MEMORY:
                rooms += _rooms_along(*CGROUP_MEMORY[controller], path)
    return [room for room in rooms if room is not None]


def _rooms_along(directory, limit_file, usage_file, cache_field, path):
    """The room of the group at `path` and of each group above it, up to the mount (None where unknown)."""
    parts = [part for part in path.split("/") if part]
    groups = [os.path.join(CGROUP_ROOT, directory, *parts[:depth]) for depth in range(len(parts), -1, -1)]
    return [_room_of(group, limit_file, usage_file, cache_field) for group in groups]


def _room_of(group, limit_file, usage_file, cache_field):
    try:
        with open(os.path.join(group, limit_file)) as limit_text, open(os.path.join(group, usage_file)) as usage:
            limit = limit_text.read().strip()
            used = int(usage.read())
        if limit == "max":
            return None
        return int(limit) - used + _stat(group, cache_field)
    except (OSError, ValueError):
        return None


def _stat(group, name):
    """memory.stat's `name` of `group` (0 if absent)."""
    try:
        with open(os.path.join(group, "memory.stat")) as stat:
            for line in stat:
                key, _, value = line.partition(" ")
                if key == name:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0
