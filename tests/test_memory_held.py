"""Memory promised is memory held: each end checks what this host can hold before it allocates a guest."""

import contextlib
import _thread
import threading

import pytest

from emulator.core.units import format_bytes
from emulator.running.migration import ready_to_move_pages, receive, run_source, send
from emulator.shell import cli
from emulator.vm import allocator
from emulator.vm.allocator import MARGIN_BYTES, MemoryShortfall
from emulator.vm.guest import GuestMemory, GuestSpec
from emulator.vm.scenario import GuestConfig, MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec
from tests.engines import Messages, run_pair
from tests.fakelink import link_pair

MIB = 1 << 20
KEPT_FREE = f"(MemAvailable and any cgroup memory limit, less {format_bytes(MARGIN_BYTES)} kept free)"


def scenario(mib, seed=0, fill="zero"):
    return Scenario(GuestSpec(mib * MIB, fill=fill, seed=seed), WorkloadSpec(rate_pages_per_s=50, seed=seed),
                    MigrationOptions(codec="raw", batch_pages=64, timeout_s=5), GuestConfig(cpu=None))


def resident_bytes():
    """This process's VmRSS."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class Room:
    """A fake reading of what this host can hold (before the margin), changed by the test."""

    def __init__(self, monkeypatch, available_bytes):
        self.bytes = available_bytes + MARGIN_BYTES
        monkeypatch.setattr(allocator, "memory_room_bytes", lambda: self.bytes)


# the reading -----------------------------------------------------------------------------------------
def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A fake /proc and /sys/fs/cgroup under tmp_path: MemAvailable 8 GiB."""
    write(tmp_path / "meminfo", "MemTotal:       16777216 kB\nMemFree:  1 kB\nMemAvailable:    8388608 kB\n")
    monkeypatch.setattr(allocator, "MEMINFO", str(tmp_path / "meminfo"))
    monkeypatch.setattr(allocator, "SELF_CGROUP", str(tmp_path / "cgroup"))
    monkeypatch.setattr(allocator, "CGROUP_ROOT", str(tmp_path / "sys"))
    return tmp_path


def test_without_a_cgroup_limit_the_room_is_memavailable(host):
    write(host / "cgroup", "0::/\n")
    write(host / "sys" / "memory.max", "max\n")
    write(host / "sys" / "memory.current", "123\n")
    assert allocator.memory_room_bytes() == 8 << 30
    assert allocator.available_memory_bytes() == (8 << 30) - MARGIN_BYTES


def test_a_cgroup_v2_limit_counts_from_the_tightest_enclosing_group(host):
    write(host / "cgroup", "0::/box/job\n")
    cgroup = host / "sys" / "box"
    write(cgroup / "memory.max", str(3 << 30))  # the parent's limit is the tighter
    write(cgroup / "memory.current", str(1 << 30))
    write(cgroup / "memory.stat", "anon 1\ninactive_file 268435456\n")  # page cache it would reclaim
    write(cgroup / "job" / "memory.max", str(6 << 30))
    write(cgroup / "job" / "memory.current", str(1 << 30))
    write(cgroup / "job" / "memory.stat", "inactive_file 0\n")
    assert allocator.memory_room_bytes() == (3 << 30) - (1 << 30) + (256 << 20)


def test_a_cgroup_v1_memory_limit_counts(host):
    write(host / "cgroup", "5:cpu,cpuacct:/x\n4:memory:/box\n0::/\n")
    write(host / "sys" / "memory" / "box" / "memory.limit_in_bytes", str(2 << 30))
    write(host / "sys" / "memory" / "box" / "memory.usage_in_bytes", str(1536 << 20))
    write(host / "sys" / "memory" / "box" / "memory.stat", "cache 9\ntotal_inactive_file 0\n")
    write(host / "sys" / "memory" / "memory.limit_in_bytes", "9223372036854771712")  # the root: no limit
    write(host / "sys" / "memory" / "memory.usage_in_bytes", str(12 << 30))
    assert allocator.memory_room_bytes() == 512 << 20
    assert allocator.available_memory_bytes() == max(0, (512 << 20) - MARGIN_BYTES)


# the destination ---------------------------------------------------------------------------------------
def serve_until_done(sources, **options):
    """A serving receiver on loopback in this (the main) thread, `sources(endpoint)` on another; their outcomes.

    Interrupted like Ctrl-C once `sources` returns, as a user stops a serving receiver."""
    outcomes, failures = [], []

    def run(endpoint):
        try:
            sources(endpoint)
        except BaseException as error:  # noqa: BLE001 - raised again in the test's thread
            failures.append(error)
        finally:
            _thread.interrupt_main()

    def on_ready(endpoint):
        threading.Thread(target=run, args=(endpoint,), daemon=True).start()

    assert receive("tcp://127.0.0.1:0", serve=True, timeout_s=5.0, ready=on_ready, on_outcome=outcomes.append,
                   **options) is None  # stopped between migrations
    if failures:
        raise failures[0]
    return outcomes


def test_a_destination_refuses_a_guest_it_cannot_hold_now_naming_both_figures_and_keeps_serving(monkeypatch):
    big = scenario(64)
    source_guest = GuestMemory(big.guest)  # the source's, made before: the destination's check is tested
    room = Room(monkeypatch, 32 * MIB)
    reports = []

    def sources(endpoint):
        reports.append(run_source(big, endpoint, guest=source_guest))
        room.bytes = 1 << 40
        reports.append(run_source(scenario(16, seed=1, fill="random"), endpoint))

    outcomes = serve_until_done(sources, capacity_bytes=1 << 30)  # it offers more than it can hold
    refused, after = reports
    assert refused.status == "failed" and not refused.passes
    assert refused.reason == ("destination refused: guest.memory_bytes is 64.0 MiB (67108864 B), more than this "
                              f"destination can hold now: 32.0 MiB (33554432 B) available {KEPT_FREE}: free memory "
                              "on the destination, or give the guest at most 32.0 MiB")
    assert after.status == "completed" and after.digests_match, after.reason
    assert [outcome.status for outcome in outcomes] == ["failed", "completed"]
    assert outcomes[1].digest == after.source_digest


def test_a_guest_that_fits_is_resident_before_accept(monkeypatch):
    ready_to_move_pages()
    guest_mib = 64
    Room(monkeypatch, (guest_mib + 4) * MIB)
    resident_at = {}

    class Watch(Messages):
        def message(self, text):
            if text.startswith(("setup: allocating", "accepted a")):
                resident_at[text.split()[0]] = resident_bytes()  # the source waits for ACCEPT meanwhile

    report, outcome, _, destination = run_pair(scenario(guest_mib), *link_pair(), destination_progress=Watch())
    assert report.status == outcome.status == "completed" and report.digests_match
    assert resident_at["accepted"] - resident_at["setup:"] >= 0.95 * guest_mib * MIB


# the source --------------------------------------------------------------------------------------------
def test_a_source_that_cannot_hold_its_guest_says_so_before_it_connects(monkeypatch, capsys):
    Room(monkeypatch, 16 * MIB)
    before = resident_bytes()
    with pytest.raises(MemoryShortfall) as shortfall:
        send(scenario(64), "tcp://127.0.0.1:1")  # nothing listens there: connecting would fail otherwise
    assert str(shortfall.value) == ("guest.memory_bytes is 64.0 MiB (67108864 B), more than this host can hold "
                                    f"now: 16.0 MiB (16777216 B) available {KEPT_FREE}: free memory on this host, "
                                    "or give the guest at most 16.0 MiB")
    assert resident_bytes() - before < 8 * MIB  # nothing was allocated
    assert cli.main(["send", "--to", "tcp://127.0.0.1:1", "--memory", "64MiB", "--quiet"]) == cli.EXIT_USAGE
    assert "--memory: the source guest needs 64.0 MiB, this host has 16.0 MiB available" in capsys.readouterr().err


def test_two_ends_on_one_host_cannot_together_overcommit_it(monkeypatch):
    """A host with room for one 48 MiB guest: the receiver starts with all of it free; the source fills its
    guest before HELLO, so the destination's check at HELLO sees that memory gone."""
    ready_to_move_pages()
    host_bytes, held = MARGIN_BYTES + 80 * MIB, []
    checked_holding = allocator.holding

    @contextlib.contextmanager
    def holding(needed_bytes, field):  # what an end allocated is gone from the host's room (resident: see above)
        with checked_holding(needed_bytes, field):
            yield
        held.append(needed_bytes)

    monkeypatch.setattr(allocator, "holding", holding)
    monkeypatch.setattr(allocator, "memory_room_bytes", lambda: host_bytes - sum(held))
    listening, outcome = threading.Event(), {}

    def destination():
        outcome["it"] = receive("tcp://127.0.0.1:0", timeout_s=5.0, wait_s=5.0,
                                ready=lambda endpoint: (outcome.update(endpoint=endpoint), listening.set()))

    receiver = threading.Thread(target=destination, daemon=True)
    receiver.start()
    assert listening.wait(10)
    report = run_source(scenario(48), outcome["endpoint"])
    receiver.join(10)
    assert report.status == outcome["it"].status == "failed" and not report.passes
    assert report.reason.startswith("destination refused: guest.memory_bytes is 48.0 MiB (50331648 B), more than "
                                    "this destination can hold now: ")
    assert "available" in report.reason
