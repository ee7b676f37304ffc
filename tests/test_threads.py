"""Thread names the OS shows, and the CPU of each thread read from /proc."""

import os
import threading
import time

import pytest

from emulator.dataplane.threads import CpuMeter, ThreadCpu, cpu_between, migration_cpu_s, name_this_thread, role, thread_cpu

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")


def busy_thread(name, seconds):
    """A thread named `name` (as the OS shows it) that spins for `seconds` of CPU, and its native id."""
    ready, done = threading.Event(), threading.Event()
    found = {}

    def run():
        name_this_thread(name)
        found["tid"] = threading.get_native_id()
        ready.set()
        started = time.thread_time()
        while time.thread_time() - started < seconds:
            pass
        done.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    ready.wait(10)
    return thread, found["tid"], done


def test_a_named_thread_shows_its_name_and_the_cpu_it_used():
    before = thread_cpu()
    thread, tid, done = busy_thread("recv-3", 0.2)
    time.sleep(0.3)
    after = thread_cpu()
    done.set()
    thread.join()
    used = {t.tid: t for t in cpu_between(before, after)}
    assert used[tid].name == "recv-3" and 0.15 <= used[tid].cpu_s <= 0.5
    assert role(used[tid], os.getpid()) == "channel"
    assert role(used[os.getpid()], os.getpid()) == "control"


def test_roles_come_from_names_and_the_guests_vcpus_are_not_the_migrations_cost():
    main = 1
    threads = [ThreadCpu(1, "python", 1.0), ThreadCpu(2, "scan_0", 0.5), ThreadCpu(3, "ZMQbg/IO/0", 0.25),
               ThreadCpu(4, "ZMQbg/Reaper", 0.0), ThreadCpu(5, "vcpu0", 8.0), ThreadCpu(6, "encode_1", 0.125)]
    assert [role(t, main) for t in threads] == ["control", "scan", "zmq-io", "zmq-other", "guest", "encode"]
    assert migration_cpu_s(threads) == 1.875


def test_the_meter_leaves_the_guests_vcpus_out():
    meter = CpuMeter()
    thread, _, done = busy_thread("vcpu0", 0.2)
    time.sleep(0.3)
    lap = meter.lap()
    done.set()
    thread.join()
    assert lap < 0.1  # this thread slept; the vCPU's 0.2 s are the guest's
