"""The threads of a process as the operating system sees them: their names, and the CPU each used.

Each thread the data plane starts names itself (`name_this_thread`), so `top -H`,
`/proc/PID/task/*/comm` and precopy's own accounting tell its role from its name. The
CPU of every thread is read from /proc (utime + stime, in clock ticks), so the
figures cover ZeroMQ's I/O threads and the kernel's TCP copies they make, which a
thread's own clock inside Python cannot see.
"""

import ctypes
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

_PR_SET_NAME = 15
_NAME_BYTES = 15  # the kernel keeps 16 bytes, the last a NUL
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")

# role of a thread, from the start of its name: the data plane's names, then ZeroMQ's and Numba's
ROLES = (
    ("recv-", "channel"), ("scan", "scan"), ("encode", "encode"),
    ("ZMQbg/IO", "zmq-io"), ("ZMQbg", "zmq-other"), ("vcpu", "guest"),
)
GUEST_ROLE = "guest"  # the guest's own vCPUs (and a disk's writer, its vcpu0): not the migration's cost

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _prctl = _libc.prctl
except (OSError, AttributeError):  # not Linux: threads keep the process's name
    _prctl = None


def name_this_thread(name):
    """Give the calling thread `name` (cut to 15 bytes) where the OS shows thread names."""
    if _prctl is not None:
        _prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:_NAME_BYTES]), 0, 0, 0)


def _name_as_python_does():
    name_this_thread(threading.current_thread().name)


def named_pool(workers, prefix):
    """A ThreadPoolExecutor of `workers` threads that the OS shows as PREFIX_0, PREFIX_1..."""
    return ThreadPoolExecutor(workers, thread_name_prefix=prefix, initializer=_name_as_python_does)


@dataclass(frozen=True)
class ThreadCpu:
    """One thread's name and the CPU seconds it has used, user and system together."""

    tid: int
    name: str
    cpu_s: float


def thread_cpu(pid="self"):
    """{tid: ThreadCpu} for every live thread of process `pid` (this one by default); {} without /proc."""
    found = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                line = stat.read()
        except OSError:
            continue  # ended meanwhile
        name = line[line.index("(") + 1 : line.rindex(")")]
        rest = line[line.rindex(")") + 2 :].split()
        utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5), counted after the name
        found[int(tid)] = ThreadCpu(int(tid), name, (utime + stime) / _TICKS_PER_S)
    return found


def role(thread, main_tid):
    """The role of `thread` (a ThreadCpu) in a process whose main thread is `main_tid`: "control" for the
    main thread, a name from ROLES, or "other"."""
    if thread.tid == main_tid:
        return "control"
    for prefix, name in ROLES:
        if thread.name.startswith(prefix):
            return name
    return "other"


def cpu_between(before, after):
    """[ThreadCpu] of CPU each thread used from `before` to `after` (two thread_cpu readings); a thread born
    in between counts from zero, one that ended is left out."""
    used = []
    for tid, now in after.items():
        then = before.get(tid)
        start = then.cpu_s if then is not None else 0.0  # (a thread may have named itself in between)
        used.append(ThreadCpu(tid, now.name, max(0.0, now.cpu_s - start)))
    return used


def migration_cpu_s(used):
    """CPU seconds of [ThreadCpu] `used`, the guest's own threads left out: what moving its memory cost."""
    return sum(thread.cpu_s for thread in used if not any(
        thread.name.startswith(prefix) for prefix, name in ROLES if name == GUEST_ROLE))


class CpuMeter:
    """The CPU seconds a migration uses in this process: every thread's but the guest's own vCPUs' (from
    /proc; without /proc, the whole process's time). `lap()` gives the seconds since the last lap."""

    def __init__(self):
        self._proc = bool(thread_cpu())
        self._then = self._read()

    def _read(self):
        return thread_cpu() if self._proc else time.process_time()

    def lap(self):
        now = self._read()
        used = migration_cpu_s(cpu_between(self._then, now)) if self._proc else now - self._then
        self._then = now
        return used
