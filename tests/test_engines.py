"""Source and destination engines joined in memory (no sockets)."""

import dataclasses
import json
import math
import time

import numpy as np
import pytest

from emulator.destination.receiver import DestinationLimits
from emulator.source.policy import DowntimeRamp, PolicyConfig
from emulator.vm.guest import GuestMemory, GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import Workload, WorkloadSpec
from emulator.wire import protocol
from kernels import pages
from tests.engines import Messages, run_pair
from tests.fakelink import link_pair, wait_until

PAGE = 4096


def scenario(memory_pages=1024, fill="mixed", rate=0.0, pattern="uniform", **migration):
    migration.setdefault("timeout_s", 5.0)
    return Scenario(GuestSpec(memory_pages * PAGE, fill=fill, seed=5),
                    WorkloadSpec(vcpus=2, rate_pages_per_s=rate, pattern=pattern, seed=6),
                    MigrationOptions(**migration))


@pytest.mark.parametrize("codec", ["raw", "lz4"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("verify", ["incremental", "full"])
def test_idle_guest_arrives_byte_identical(codec, channels, verify):
    s = scenario(codec=codec, channels=channels, verify=verify)
    report, outcome, guest, destination = run_pair(s, *link_pair())
    assert report.status == "completed" and outcome.status == "completed"
    assert np.array_equal(destination.migrated, guest.data)
    assert report.digests_match and report.source_digest == guest.digest()
    zero, _ = pages.split_zero_pages(guest.data, PAGE, np.arange(guest.n_pages))
    first = report.passes[0]
    assert first.pages_sent == 1024 and first.zero_pages == zero.size
    assert report.switchover_reason == "converged" and len(report.passes) == 1
    assert report.blackout.final_pages == 0
    assert [p.phase for p in report.phases] == ["setup", "precopy", "blackout", "handover", "resume", "announce"]
    if codec == "lz4":
        assert report.summary["compression-ratio"] > 1.5


@pytest.mark.parametrize("codec, verify", [("raw", "incremental"), ("lz4", "full")])
def test_writers_flat_out_still_arrive_byte_identical(codec, verify):
    s = scenario(memory_pages=4096, rate=math.inf, codec=codec, verify=verify,
                 policy=PolicyConfig(max_passes=4, downtime_limit_s=1e-9))
    for _ in range(3):
        report, outcome, guest, destination = run_pair(s, *link_pair())
        assert report.status == "completed", report.reason
        assert report.switchover_reason == "max-passes" and len(report.passes) == 4
        assert report.blackout.final_pages > 0  # the writers really dirtied pages to the end
        assert np.array_equal(destination.migrated, guest.data)


class RecordingGuest(GuestMemory):
    """A guest whose harvests also note how far the writers' logs had got (writers paused around it)."""

    def attach(self, workload):
        self.workload, self.harvests, self.log_marks = workload, [], [0]

    def harvest(self, out=None):
        was_paused = self.workload.paused  # the blackout's harvest: writers already stopped
        self.workload.pause()
        try:
            result = super().harvest(out)
            self.harvests.append(result.copy())
            self.log_marks.append(self.workload.logged_pages().size)
            return result
        finally:
            if not was_paused:
                self.workload.resume()


def test_each_pass_sends_exactly_the_pages_written_since_the_previous_harvest():
    s = scenario(memory_pages=4096, fill="random", rate=20_000, pattern="hotset",
                 policy=PolicyConfig(max_passes=6, downtime_limit_s=1e-9, stall_passes=None))
    guest = RecordingGuest(s.guest)
    # one writer: its log is in write order, so log slices between marks are exact
    workload = Workload(guest, WorkloadSpec(vcpus=1, rate_pages_per_s=20_000, pattern="hotset", seed=3),
                        log_capacity=1 << 20)
    guest.attach(workload)
    report, outcome, _, destination = run_pair(s, *link_pair(), guest=guest, workload=workload)
    assert report.status == "completed", report.reason
    assert len(report.passes) >= 3, (report.switchover_reason, [p.remaining_pages for p in report.passes])
    log = workload.logged_pages()
    checked = 0
    for k in range(1, len(guest.harvests)):
        written = np.unique(log[guest.log_marks[k] : guest.log_marks[k + 1]])
        assert guest.harvests[k].tolist() == written.tolist()
        sent = report.passes[k].pages_sent if k < len(report.passes) else report.blackout.final_pages
        assert sent == written.size
        checked += written.size
    assert checked > 100  # the writer really wrote between harvests
    assert np.array_equal(destination.migrated, guest.data)


def test_stall_switches_over_or_aborts_as_configured():
    base = dict(memory_pages=512, fill="random", rate=math.inf, max_bandwidth_bytes_per_s=8e6, codec="raw")
    report, outcome, guest, destination = run_pair(
        scenario(**base, policy=PolicyConfig(stall_passes=2, downtime_limit_s=0.001)), *link_pair())
    assert report.status == "completed" and report.switchover_reason == "stalled"
    assert np.array_equal(destination.migrated, guest.data)

    writes_after = []

    def keeps_writing(workload):
        writes = workload.writes
        wait_until(lambda: workload.writes > writes)  # the guest runs on at the source
        writes_after.append(workload.writes - writes)

    report, outcome, guest, destination = run_pair(
        scenario(**base, policy=PolicyConfig(stall_passes=2, downtime_limit_s=0.001, on_stall="abort")), *link_pair(),
        after=keeps_writing)
    assert report.status == "failed" and "stalled" in report.reason
    assert report.switchover_reason == "stalled" and report.blackout is None
    assert outcome.status == "failed" and "source aborted" in outcome.reason
    assert destination.guest is None and destination.migrated is None  # discarded, never resumed
    assert writes_after and writes_after[0] > 0


def test_refusal_leaves_the_source_running_and_unharmed():
    s = scenario(rate=2000)
    report, outcome, guest, destination = run_pair(s, *link_pair(), capacity_bytes=100 * PAGE)
    assert report.status == "failed"
    assert "refused" in report.reason and "capacity" in report.reason
    assert outcome.status == "failed" and not report.passes and report.blackout is None


class LeakyGuest(GuestMemory):
    """A dirty-tracking bug: after pass 0, every harvest silently drops its first page."""

    harvests = 0

    def harvest(self, out=None):
        pages_found = super().harvest(out)
        self.harvests += 1
        return pages_found[1:] if self.harvests > 2 and pages_found.size else pages_found


@pytest.mark.parametrize("verify", ["incremental", "full"])
def test_a_write_that_escapes_dirty_tracking_is_caught(verify):
    s = scenario(fill="random", rate=50_000, codec="raw", verify=verify,
                 policy=PolicyConfig(max_passes=3, downtime_limit_s=1e-9))
    guest = LeakyGuest(s.guest)
    report, outcome, _, destination = run_pair(s, *link_pair(), guest=guest)
    assert report.status == "failed" and report.digests_match is not True
    if verify == "full":  # the destination finds out before resuming, and never resumes
        assert "digest mismatch" in report.reason and destination.migrated is None
    elif "digest mismatch" in report.reason:
        # the lost page was written between the source's hash of it and its send: the running
        # digests differ, so the destination never resumes
        assert destination.migrated is None
    else:  # written after its send: the transport was right, so it resumed; the source's re-hash finds it
        assert "escaped the dirty tracking" in report.reason and outcome.status == "completed"


class CorruptingLink:
    """Flips one byte of the first PAGES payload on its way (a bug the digest must catch)."""

    def __init__(self, link):
        self.link, self.done = link, False

    def __getattr__(self, name):
        return getattr(self.link, name)

    def send_data(self, channel, frames):
        if not self.done and protocol.HEADER.unpack_from(bytes(frames[0]))[2] == protocol.MsgType.PAGES:
            payload = bytearray(bytes(frames[2]))
            payload[100] ^= 0xFF
            frames, self.done = [frames[0], frames[1], bytes(payload)], True
        self.link.send_data(channel, frames)


def test_a_corrupted_page_is_caught_and_the_destination_never_resumes():
    s = scenario(fill="random", codec="raw")
    source_link, destination_link = link_pair()
    report, outcome, guest, destination = run_pair(s, CorruptingLink(source_link), destination_link)
    assert report.status == "failed" and "digest mismatch" in report.reason
    assert outcome.status == "failed" and destination.guest is None and destination.migrated is None
    assert report.blackout is None and report.destination_digest is None


class LyingDestinationLink(CorruptingLink):
    """A destination that reports another memory digest in RESUMED than the one it checked (or, with
    `drop`, leaves that field out)."""

    def __init__(self, link, drop=None):
        super().__init__(link)
        self.drop = drop

    def send_control(self, peer, frames):
        if protocol.HEADER.unpack_from(bytes(frames[0]))[2] == protocol.MsgType.RESUMED:
            body = json.loads(bytes(frames[2]))
            body["digest"] = "0" * 32
            body.pop(self.drop, None)
            frames = protocol.encode_control(protocol.MsgType.RESUMED, protocol.HEADER.unpack_from(bytes(frames[0]))[4],
                                             0, body)
        self.link.send_control(peer, frames)


def test_a_destination_that_resumes_with_another_digest_fails_the_migration():
    source_link, destination_link = link_pair()
    report, outcome, guest, destination = run_pair(scenario(codec="raw"), source_link,
                                                   LyingDestinationLink(destination_link))
    assert report.status == "failed" and report.digests_match is False
    assert "0" * 32 in report.reason and report.source_digest in report.reason


def test_a_resumed_with_a_field_missing_leaves_the_source_paused():
    s = scenario(rate=2000.0, codec="raw")
    source_link, destination_link = link_pair()
    paused = []
    report, outcome, guest, destination = run_pair(s, source_link, LyingDestinationLink(destination_link, "resume_s"),
                                                   after=lambda workload: paused.append(workload.paused))
    assert report.status == "failed" and "body.resume_s" in report.reason
    assert paused == [True]  # the destination said it resumed: the guest must not run here too


class GarbageLink(CorruptingLink):
    def send_data(self, channel, frames):
        if not self.done:
            frames, self.done = [b"PCPY" + bytes(40), b"", b""], True
        self.link.send_data(channel, frames)


def test_a_bad_frame_aborts_cleanly_with_the_field_named():
    source_link, destination_link = link_pair()
    report, outcome, guest, destination = run_pair(scenario(), GarbageLink(source_link), destination_link)
    assert outcome.status == "failed" and outcome.reason.startswith("protocol error: version")
    assert report.status == "failed" and "destination aborted: protocol error: version" in report.reason
    # no pass was recorded, but what went out is counted, not "0 B on the wire"
    assert not report.passes and report.summary["ram"]["transferred"] > 0


def test_a_silent_destination_fails_the_source_within_its_timeout():
    s = Scenario(GuestSpec(64 * PAGE), WorkloadSpec(rate_pages_per_s=1000), MigrationOptions(timeout_s=0.3))
    source_link, _ = link_pair(timeout_s=0.3)
    guest = GuestMemory(s.guest)
    workload = Workload(guest, s.workload)
    from emulator.source.sender import Source

    started = time.monotonic()
    with workload:
        report = Source(s, guest, workload, source_link).run()
        writes = workload.writes
        time.sleep(0.05)
        assert workload.writes > writes  # still running on the source
    assert report.status == "failed" and "from the destination within 0.3 s" in report.reason
    assert time.monotonic() - started < 2


def test_a_slow_setup_keeps_the_source_waiting_with_heartbeats(monkeypatch):
    from emulator.destination import receiver

    allocate = receiver.GuestMemory.blank

    def slow_blank(spec):
        time.sleep(0.8)  # a big guest on a VM: seconds of first-touch page faults
        return allocate(spec)

    monkeypatch.setattr(receiver.GuestMemory, "blank", staticmethod(slow_blank))
    report, outcome, guest, destination = run_pair(scenario(timeout_s=0.2), *link_pair(timeout_s=0.2))
    assert report.status == "completed", report.reason
    assert report.summary["setup-time"] >= 800


def test_auto_converge_throttles_a_writer_that_outruns_the_link_until_it_converges():
    base = dict(memory_pages=512, fill="random", rate=2000, codec="raw", max_bandwidth_bytes_per_s=4e6,
                policy=PolicyConfig(downtime_limit_s=0.05, max_passes=15))
    report, *_ = run_pair(scenario(**base), *link_pair())
    assert report.switchover_reason == "stalled"  # lambda 2: without a throttle it never converges

    report, outcome, guest, destination = run_pair(scenario(**base, auto_converge=True), *link_pair())
    throttles = [p.throttle_pct for p in report.passes]
    assert throttles[0] == 0 and throttles[1] == 20 and throttles == sorted(throttles)
    assert all(b - a in (0, 10) for a, b in zip(throttles[1:], throttles[2:]))
    assert report.status == "completed" and report.switchover_reason == "converged", throttles
    assert report.summary["cpu-throttle-percentage"] == throttles[-1] >= 50
    assert np.array_equal(destination.migrated, guest.data)


@pytest.mark.parametrize("limits, asked, reason", [
    (DestinationLimits(max_vcpus=2), {"vcpus": 3}, "workload.vcpus is 3, above this destination's limit of 2"),
    (DestinationLimits(max_channels=2), {"channels": 3}, "migration.channels is 3, above this destination's limit of 2"),
    (DestinationLimits(max_device_state_bytes=1 << 20), {"device_state_bytes": 2 << 20},
     "migration.device_state_bytes is 2.00 MiB, above this destination's limit of 1.00 MiB"),
    (DestinationLimits(max_message_bytes=1 << 20), {"batch_pages": 512},
     "migration.batch_pages x guest.page_size is 2.00 MiB, above this destination's limit of 1.00 MiB"),
])
def test_a_hello_beyond_a_destination_limit_is_refused_with_the_limit(limits, asked, reason):
    s = scenario(rate=0)
    workload = {k: v for k, v in asked.items() if k == "vcpus"}
    migration = {k: v for k, v in asked.items() if k != "vcpus"}
    s = Scenario(s.guest, dataclasses.replace(s.workload, **workload), dataclasses.replace(s.migration, **migration))
    source_link, destination_link = link_pair()
    report, outcome, _, destination = run_pair(s, source_link, destination_link, limits=limits)
    assert report.status == "failed" and reason in report.reason, report.reason
    assert outcome.status == "failed" and reason in outcome.reason and not report.passes


def test_a_migration_longer_than_the_destination_allows_is_aborted():
    s = scenario(fill="random", rate=0, codec="raw", max_bandwidth_bytes_per_s=2e6)  # pass 0 takes about 2 s
    report, outcome, _, destination = run_pair(s, *link_pair(), limits=DestinationLimits(max_duration_s=0.5))
    assert outcome.status == "failed" and "limit of 0.5 s" in outcome.reason
    assert report.status == "failed" and "limit of 0.5 s" in report.reason and destination.guest is None


@pytest.mark.parametrize("memory_pages", [1, 16, 65])
def test_a_guest_smaller_than_a_bitmap_word_migrates(memory_pages):
    """The last bitmap word reaches past the last page: the source's harvest must have room for it."""
    s = scenario(memory_pages=memory_pages, fill="random", rate=2000, codec="raw")
    report, outcome, guest, destination = run_pair(s, *link_pair())
    assert report.status == "completed" and report.digests_match, report.reason


@pytest.mark.parametrize("cap, cpu_bound", [(1e12, True), (2e6, False)])
def test_a_pass_0_far_below_the_cap_is_said_to_be_cpu_bound(cap, cpu_bound):
    messages = Messages()
    s = scenario(memory_pages=256, fill="random", rate=0, codec="raw", max_bandwidth_bytes_per_s=cap)
    report, outcome, _, _ = run_pair(s, *link_pair(), progress=messages)
    assert report.status == "completed"
    said = [text for text in messages.texts if "not the cap, set the pace" in text]
    assert bool(said) == cpu_bound, messages.texts
    if cpu_bound:
        assert said[0].startswith("pass 0 ran at ") and "of the 1.00 TB/s cap" in said[0]


def test_a_guest_the_destination_cannot_host_is_that_migrations_failure_with_its_real_reason(monkeypatch):
    import emulator.destination.hosted

    def broken(guest, spec, faults=None):
        raise ValueError("the writers could not be built")

    monkeypatch.setattr(emulator.destination.hosted, "Workload", broken)  # built while the source hears heartbeats
    report, outcome, _, destination = run_pair(scenario(memory_pages=64), *link_pair())
    assert outcome.status == "failed" and destination.guest is None
    assert outcome.reason == "the destination failed: ValueError: the writers could not be built"
    assert report.status == "failed" and "the writers could not be built" in report.reason


def test_a_downtime_ramp_raises_the_limit_until_a_stalled_guest_fits():
    # a writer twice as fast as the 8 MB/s cap keeps about 80% of the 4 MiB guest dirty: never under the
    # 2 MB of 250 ms; the ramp reaches 1 s (all of it fits) after 4 steps of 256 s per GiB = 1 s each
    ramp = DowntimeRamp(4, 256.0)
    s = scenario(rate=4000, fill="random", codec="raw", max_bandwidth_bytes_per_s=8e6,
                 policy=PolicyConfig(downtime_limit_s=1.0, downtime_ramp=ramp, stall_passes=None, max_passes=100))
    report, outcome, guest, destination = run_pair(s, *link_pair())
    assert report.status == "completed" and report.switchover_reason == "converged", report.reason
    limits = [p.downtime_limit_s for p in report.passes]
    steps = [0.25 + 0.1875 * i for i in range(5)]
    assert all(any(limit == pytest.approx(step) for step in steps) for limit in limits), limits
    assert limits == sorted(limits) and limits[0] == pytest.approx(0.25) and limits[-1] > 0.25
    assert all(p.threshold_bytes == pytest.approx(p.downtime_limit_s * 8e6, rel=0.2) for p in report.passes)
    assert np.array_equal(destination.migrated, guest.data)


def test_dirty_limit_starts_once_needed_and_holds_the_writers_to_it():
    # two writers flat out outrun a 20 MB/s cap; from the first pass that dirtied more than half of what it
    # sent, each is held to 1 MB/s (256 page writes/s): 512 writes/s in all, and their time held back is shown
    s = scenario(memory_pages=2048, rate=math.inf, fill="random", codec="raw", max_bandwidth_bytes_per_s=20e6,
                 dirty_limit_bytes_per_s=1e6, policy=PolicyConfig(max_passes=5, stall_passes=None))
    messages = Messages()
    report, outcome, guest, destination = run_pair(s, *link_pair(), progress=messages)
    assert report.status == "completed", report.reason
    first, *limited = report.passes
    assert first.dirty_limit_throttle_s == 0 and first.dirty_pages_rate > 10_000  # not needed before pass 0 ended
    assert limited and all(p.dirty_pages_rate == pytest.approx(512, rel=0.15) for p in limited[1:])
    assert all(p.dirty_limit_throttle_s > 0.5 * p.duration_s for p in limited[1:])
    assert report.summary["dirty-limit-throttle-time-per-round"] == pytest.approx(
        report.passes[-1].dirty_limit_throttle_s * 1e6)
    assert "dirty-limit: each vCPU held to 1.00 MB/s of page writes" in messages.texts
    assert np.array_equal(destination.migrated, guest.data)


@pytest.mark.parametrize("codec, verify", [("raw", "incremental"), ("lz4", "full")])
def test_xbzrle_sends_small_writes_into_a_hot_set_as_deltas_byte_identical(codec, verify):
    # 64-byte writes into a 10% hot set of random pages: a page re-sent twice crosses as a few runs (its first
    # re-send, in pass 1, is a cache miss: the cache holds pages as re-sent, as QEMU's does)
    def run(xbzrle):
        s = scenario(memory_pages=4096, rate=20_000, pattern="hotset", fill="random", codec=codec, verify=verify,
                     xbzrle=xbzrle, xbzrle_cache_bytes=16 << 20, max_bandwidth_bytes_per_s=40e6,
                     policy=PolicyConfig(max_passes=4, downtime_limit_s=1e-9, stall_passes=None))
        s = dataclasses.replace(s, workload=dataclasses.replace(s.workload, write_size=64))
        report, outcome, guest, destination = run_pair(s, *link_pair())
        assert report.status == "completed", report.reason
        assert np.array_equal(destination.migrated, guest.data) and report.digests_match
        return report

    plain, delta = run(False), run(True)
    cache = delta.summary["xbzrle-cache"]
    assert "xbzrle-cache" not in plain.summary
    assert cache["pages"] > 0 and cache["cache-miss"] > 0 and cache["cache-size"] == 16 << 20
    assert cache["encoding-rate"] > 10  # a 4 KiB page with a few 64-byte writes: a few hundred bytes
    # per page re-sent from pass 2 on (how many pages a paced pass re-sends varies with the machine's load): a
    # delta is a few hundred bytes, but pages re-sent there for the first time since pass 0 miss the cache and
    # cross whole, and their share moves with the timing (a quarter to a half of the plain run's bytes per page)
    def later_bytes_per_page(report):
        pages = sum(p.pages_sent for p in report.passes[2:]) + report.blackout.final_pages
        return (sum(p.wire_bytes for p in report.passes[2:]) + report.blackout.final_wire_bytes) / pages

    assert cache["bytes"] / cache["pages"] < PAGE / 8, cache  # a delta page: a few runs
    assert later_bytes_per_page(delta) < later_bytes_per_page(plain) / 2, cache


def test_xbzrle_with_writers_flat_out_stays_byte_identical():
    s = scenario(memory_pages=2048, rate=math.inf, pattern="hotset", fill="random", codec="raw", xbzrle=True,
                 policy=PolicyConfig(max_passes=5, downtime_limit_s=1e-9))
    for _ in range(3):
        report, outcome, guest, destination = run_pair(s, *link_pair())
        assert report.status == "completed", report.reason
        assert report.summary["xbzrle-cache"]["pages"] > 0
        assert np.array_equal(destination.migrated, guest.data) and report.digests_match
