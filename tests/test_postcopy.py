"""Post-copy: the guest resumes on the destination before its pages arrive, and arrives whole.

The destination's vCPUs run flat out from the resume on, so its memory at the end is the
source's paused memory plus their writes. Each vCPU's writes are replayed from its seed on
a copy of the source's memory: a write lost under a page that arrived after it, or a page
placed twice, shows as a word that is neither the source's nor a replayed write. (The
source's vCPUs run from another seed: the destination's would otherwise repeat their first
writes, word for word, and a write could not be told from the source's copy.)
"""

import dataclasses
import hashlib
import json
import math
import signal
import threading

import numpy as np
import pytest

from emulator.core.errors import LinkBroken, PeerTimeout
from emulator.dataplane.batches import BatchEncoder
from emulator.dataplane.transport import SOURCE_GONE, DestinationLink, SourceLink
from emulator.destination.receiver import Destination, DestinationLimits
from emulator.running.migration import run_source
from emulator.source.policy import PolicyConfig
from emulator.source.sender import Source
from emulator.vm.guest import GuestMemory, GuestSpec
from emulator.vm.postcopy import Backlog, Faults
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import Workload, WorkloadSpec
from emulator.wire.protocol import HEADER, Codec, MsgType, RemoteProtocolError
from emulator.wire.protocol_engines import SourceProtocol
from kernels import bitmap
from kernels.writers import WriterPattern
from tests.cli_process import PrecopyProcess
from tests.engines import Messages, run_pair
from tests.fakelink import link_pair, wait_until

PAGE = 4096


def scenario(memory_pages=4096, rate=math.inf, pattern="uniform", vcpus=2, **migration):
    migration.setdefault("timeout_s", 5.0)
    migration.setdefault("policy", PolicyConfig(downtime_limit_s=1e-9))
    return Scenario(GuestSpec(memory_pages * PAGE, fill="mixed", seed=5),
                    WorkloadSpec(vcpus=vcpus, rate_pages_per_s=rate, pattern=pattern, seed=6),
                    MigrationOptions(**migration))


def replayed(source_memory, spec, vcpu, writes):
    """The source's memory with destination vCPU `vcpu`'s first `writes` writes made on it, as its kernel makes them."""
    memory = source_memory.copy()
    n_pages = memory.size // PAGE
    writer = WriterPattern(memory, PAGE, bitmap.new_bitmap(n_pages), spec.pattern, seed=spec.seed, stream=vcpu,
                           write_size=spec.write_size, hot_fraction=spec.hot_fraction, hot_share=spec.hot_share,
                           stride=spec.stride, zipf_s=spec.zipf_s, start_page=vcpu * n_pages // spec.vcpus)
    assert writer.write(writes) == writes
    return memory


def assert_source_memory_plus_the_destination_writes(source_memory, destination_memory, workload):
    """Every word is the source's, or the last write to it of the one vCPU that wrote it (of either, if both did)."""
    spec = workload.spec
    counts = [writer.writes for writer in workload._writers]
    source, arrived = source_memory.view(np.uint64), destination_memory.view(np.uint64)
    replays = [replayed(source_memory, spec, vcpu, n).view(np.uint64) for vcpu, n in enumerate(counts)]
    written = [replay != source for replay in replays]
    untouched = ~np.logical_or.reduce(written)
    assert np.array_equal(arrived[untouched], source[untouched])
    for vcpu, replay in enumerate(replays):
        only = written[vcpu] & ~np.logical_or.reduce([w for other, w in enumerate(written) if other != vcpu])
        assert np.array_equal(arrived[only], replay[only]), f"vCPU {vcpu}'s writes are not all there"
    both = np.logical_and.reduce(written)
    assert np.all(np.logical_or.reduce([arrived[both] == replay[both] for replay in replays]))
    return sum(counts)


def loopback(s):
    """A real link pair on TCP loopback, in this process: (source link, destination link)."""
    destination = DestinationLink("tcp://127.0.0.1:0", timeout_s=s.migration.timeout_s)
    return SourceLink(destination.endpoint, s.migration.timeout_s, channels=s.migration.channels), destination


def over_loopback(s):
    """run_pair over loopback, the source's vCPUs on a seed of their own (module doc)."""
    guest = GuestMemory(s.guest)
    source_vcpus = Workload(guest, dataclasses.replace(s.workload, seed=s.workload.seed + 1))
    links = loopback(s)
    try:
        return run_pair(s, *links, guest=guest, workload=source_vcpus)
    finally:
        for link in links:
            link.close()


@pytest.mark.parametrize("codec, channels, pattern", [("raw", 1, "uniform"), ("lz4", 3, "hotset")])
def test_postcopy_arrives_byte_identical_with_the_destination_writers_flat_out(codec, channels, pattern):
    # capped, so the pages come over a second or so and the vCPUs write between their arrivals
    s = scenario(codec=codec, channels=channels, pattern=pattern, postcopy_after_passes=2,
                 max_bandwidth_bytes_per_s=100e6)
    destination_writes = 0
    for _ in range(3):
        report, outcome, guest, destination = over_loopback(s)
        assert report.status == "completed" and outcome.status == "completed", (report.reason, outcome.reason)
        assert report.switchover_reason == "postcopy-after" and len(report.passes) == 2
        assert report.blackout.final_pages == 0 and report.digests_match
        postcopy = report.postcopy
        assert postcopy.missing_pages > 100 and postcopy.pages_requested > 0  # the vCPUs really waited for pages
        assert postcopy.requested_sent + postcopy.pushed_pages == postcopy.missing_pages  # each sent once
        assert destination.pages_applied == sum(p.pages_sent for p in report.passes) + postcopy.missing_pages
        assert report.source_digest == guest.digest()  # what crossed is the paused source, whole
        destination_writes += assert_source_memory_plus_the_destination_writes(guest.data, destination.migrated,
                                                                               destination.workload)
    assert destination_writes > 1000  # the vCPUs really wrote while the pages came


def test_a_guest_that_converges_migrates_by_pre_copy_though_post_copy_is_allowed():
    s = scenario(rate=0.0, postcopy=True, policy=PolicyConfig())
    report, outcome, guest, destination = run_pair(s, *link_pair())
    assert report.status == "completed" and report.switchover_reason == "converged" and report.postcopy is None
    assert np.array_equal(destination.migrated, guest.data)


def test_a_stalled_pre_copy_becomes_post_copy_and_a_paced_guest_counts_its_stalls():
    s = scenario(rate=20_000, pattern="hotset", postcopy=True,
                 policy=PolicyConfig(downtime_limit_s=1e-9, max_passes=3, stall_passes=None))
    report, outcome, guest, destination = run_pair(s, *link_pair())
    assert report.status == "completed", report.reason
    assert report.switchover_reason == "max-passes" and report.postcopy is not None
    postcopy = report.postcopy
    assert len(postcopy.vcpu_blocktime_s) == 2 and sum(postcopy.vcpu_blocktime_s) > 0
    assert 0 <= postcopy.blocktime_s <= min(postcopy.vcpu_blocktime_s)  # all at once is at most each one's
    # no wait outlasts the last page by more than a woken vCPU may wait for a core on a loaded 2-core machine
    assert max(postcopy.vcpu_blocktime_s) <= postcopy.last_page_s + 0.25
    summary = report.summary
    assert summary["ram"]["postcopy-requests"] == postcopy.pages_requested
    assert summary["ram"]["postcopy-bytes"] == postcopy.wire_bytes
    assert summary["ram"]["transferred"] == sum(p.wire_bytes for p in report.passes) + postcopy.wire_bytes
    assert summary["postcopy-vcpu-blocktime"] == [b * 1e3 for b in postcopy.vcpu_blocktime_s]
    assert [p.phase for p in report.phases][-1] == "postcopy"


# a link that breaks in post-copy is recovered ------------------------------------------------------------
class CutLink(SourceLink):
    """A source link whose connection drops `after` data messages into post-copy (armed by CutInPostcopy): its
    sockets close, as a network that fails drops them, and the source's send is told so. Connecting anew works."""

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        self.countdown = None  # data messages until the cut, once armed
        self.cuts = 0

    def send_data(self, channel, frames):
        if self.countdown is not None:
            self.countdown -= 1
            if self.countdown < 0:
                self.countdown = None
                self.cuts += 1
                self.close()
                raise PeerTimeout("the link was cut")
        super().send_data(channel, frames)

    def control_pending(self):
        if self.context.closed:
            raise PeerTimeout("the link was cut")
        return super().control_pending()


class CutInPostcopy(Messages):
    def __init__(self, link, after):
        super().__init__()
        self.link, self.after = link, after

    def phase(self, name, elapsed_s):
        if name == "postcopy":
            self.link.countdown = self.after


@pytest.mark.parametrize("channels", [1, 2])
def test_a_link_that_breaks_in_post_copy_is_recovered_and_the_guest_arrives_whole(channels):
    s = scenario(codec="raw", channels=channels, postcopy_after_passes=1, max_bandwidth_bytes_per_s=50e6,
                 timeout_s=2.0)
    guest = GuestMemory(s.guest)
    source_vcpus = Workload(guest, dataclasses.replace(s.workload, seed=s.workload.seed + 1))
    destination_link = DestinationLink("tcp://127.0.0.1:0", timeout_s=s.migration.timeout_s)
    source_link = CutLink(destination_link.endpoint, s.migration.timeout_s, channels=channels)
    said, heard = CutInPostcopy(source_link, after=40), Messages()
    try:
        report, outcome, guest, destination = run_pair(s, source_link, destination_link, guest=guest,
                                                       workload=source_vcpus, progress=said,
                                                       destination_progress=heard)
    finally:
        source_link.close()
        destination_link.close()
    assert source_link.cuts == 1
    assert report.status == "completed" and outcome.status == "completed", (report.reason, outcome.reason)
    postcopy = report.postcopy
    assert postcopy.recoveries == 1 and 0 < postcopy.paused_s < s.migration.timeout_s
    assert report.digests_match and report.source_digest == guest.digest()
    assert postcopy.requested_sent + postcopy.pushed_pages >= postcopy.missing_pages  # some were sent again
    assert_source_memory_plus_the_destination_writes(guest.data, destination.migrated, destination.workload)
    assert any(text.startswith("post-copy paused: the link was cut; connecting again for up to 30 s")
               for text in said.texts), said.texts
    assert any(text.startswith("post-copy recovered after ") for text in said.texts)
    assert any(text.startswith("post-copy recovered after ") for text in heard.texts), heard.texts


# a failure after the resume loses the guest ---------------------------------------------------------------
def test_a_source_killed_during_post_copy_is_a_lost_guest_on_the_destination():
    link = DestinationLink("tcp://127.0.0.1:0", timeout_s=1.5)
    destination, ended = Destination(link, limits=DestinationLimits()), {}
    thread = threading.Thread(target=lambda: ended.update(outcome=destination.run(hello_timeout_s=60)), daemon=True)
    thread.start()
    try:
        # 64 MiB of random pages at 20 MB/s: post-copy after pass 0 has seconds of pages to push
        sender = PrecopyProcess("send", "--to", link.endpoint, "--memory", "64MiB", "--fill", "random",
                                "--dirty-rate", "max", "--pattern", "uniform", "--vcpus", "2", "--codec", "raw",
                                "--max-bandwidth", "20MB/s", "--postcopy-after", "1", "--downtime-limit", "1ns",
                                "--timeout", "1.5s", "--postcopy-recover-window", "2s", "--quiet")
        wait_until(lambda: destination.live_postcopy or not thread.is_alive(), 60)
        applied = destination.pages_applied
        wait_until(lambda: destination.pages_applied > applied or not thread.is_alive(), 10)
        sender.signal(signal.SIGKILL)
        sender.finish()
        thread.join(15)
    finally:
        link.close()
    assert not thread.is_alive()  # the vCPUs waiting for pages that never come did not hold it up
    outcome = ended["outcome"]
    # the source's death is seen as its silence, or as a heartbeat or page request refused (its connection is
    # gone); the guest runs on while the source may connect again, and is lost when it has not
    assert outcome.status == "lost" and ("nothing from the source" in outcome.reason
                                         or outcome.reason.startswith(SOURCE_GONE)), outcome
    assert outcome.reason.endswith("; the source did not connect again within 2 s"), outcome.reason
    assert outcome.digest is None and destination.guest is None  # the partial guest is gone, never "completed"


def test_a_destination_killed_during_post_copy_is_a_lost_guest_and_the_source_stays_paused():
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--timeout", "1.5s")
    s = scenario(memory_pages=16384, pattern="uniform", codec="raw", timeout_s=1.5, max_bandwidth_bytes_per_s=20e6,
                 postcopy_after_passes=1)
    s = dataclasses.replace(s, guest=dataclasses.replace(s.guest, fill="random"))
    guest = GuestMemory(s.guest)
    workload = Workload(guest, s.workload)
    events = []

    class Watch:
        def phase(self, name, elapsed_s):
            events.append(name)
            if name == "postcopy":  # mid-push: pass 0 was 64 MiB at 20 MB/s, the dirty rest follows
                threading.Timer(0.3, receiver.signal, (signal.SIGKILL,)).start()

        def pass_done(self, record, page_size, total_pages):
            pass

        def message(self, text):
            pass

    try:
        endpoint = receiver.wait_listening()
        report = run_source(s, endpoint, guest=guest, workload=workload, progress=Watch())
    finally:
        receiver.signal(signal.SIGKILL)
        receiver.finish()
    assert "postcopy" in events
    assert workload.paused  # the guest ran on the destination: its copy here never ran again
    assert report.status == "lost" and "closed the connection" in report.reason, report.reason  # known at once
    assert report.postcopy is None and report.blackout is not None and report.digests_match is None


# a hostile source: the destination's rules hold, and a guest resumed here is then lost ------------------
class HostileSource:
    """A source that follows the state table but sends what the test chooses, over an in-memory link."""

    def __init__(self, s, link):
        self.s, self.link = s, link
        self.engine = SourceProtocol(s.migration.channels, PAGE, None, s.guest.n_pages)
        self.guest = GuestMemory(s.guest)
        self.encoder = BatchEncoder(self.guest, Codec.RAW, 8)
        self.device_state = bytes(s.migration.device_state_bytes)

    def reply(self):
        while True:
            message = self.engine.receive(self.link.recv_control())
            if message.type != MsgType.HEARTBEAT:
                return message

    def resume_there(self, missing):
        """HELLO, an empty pass 0, then the post-copy switch with `missing` pages missing."""
        self.link.send_control(self.engine.hello(self.s.to_dict(), "hostile"))
        assert self.reply().type == MsgType.ACCEPT
        self.link.send_control(self.engine.pass_end(0))
        assert self.reply().type == MsgType.PASS_END
        digest = hashlib.blake2b(self.device_state, digest_size=16).hexdigest()
        self.link.send_control(self.engine.postcopy("test", digest, "token"))
        self.link.send_control(self.engine.device_state(self.device_state))
        self.link.send_control(self.engine.missing(np.array(missing)))
        resumed = self.reply()
        if resumed.type == MsgType.RESUMED:
            assert self.reply().type == MsgType.ANNOUNCE
        return resumed

    def send(self, pages):
        for batch in self.encoder.batches(np.array(pages, dtype=np.int64)):
            self.link.send_data(*self.engine.data(batch))

    def close(self):
        self.encoder.close()


def hosted(s, play):
    """The destination's outcome once `play(HostileSource)` has run against it."""
    source_link, destination_link = link_pair(timeout_s=2.0)
    destination, ended = Destination(destination_link), {}
    thread = threading.Thread(target=lambda: ended.update(outcome=destination.run(hello_timeout_s=5)), daemon=True)
    thread.start()
    source = HostileSource(s, source_link)
    try:
        play(source)
    finally:
        source.close()
    thread.join(10)
    assert not thread.is_alive()
    return ended["outcome"]


def resumed_then(send):
    def play(source):
        assert source.resume_there([3, 4, 5]).type == MsgType.RESUMED
        send(source)
    return play


@pytest.mark.parametrize("send, reason", [
    (lambda source: source.send([7]), "page 7 arrived in post-copy but is not missing"),
    (lambda source: (source.send([4]), source.send([4])), "page 4 arrived in post-copy but is not missing"),
    (lambda source: (source.send([3]), source.link.send_control(source.engine.postcopy_end(1, "d"))),
     "POSTCOPY_END's messages arrived, 2 pages are still missing"),
    (lambda source: (source.send([3, 4, 5]), source.link.send_control(source.engine.postcopy_end(3, "0" * 32))),
     "memory digest mismatch after post-copy"),
])
def test_a_hostile_source_after_the_resume_is_refused_and_the_guest_lost(send, reason):
    outcome = hosted(scenario(memory_pages=64, rate=1000.0, postcopy=True), resumed_then(send))
    assert outcome.status == "lost" and reason in outcome.reason, outcome.reason


def test_post_copy_to_a_guest_that_allowed_none_is_refused_before_anything_resumes():
    outcome = hosted(scenario(memory_pages=64, rate=1000.0), lambda source: source.resume_there([3]))
    assert outcome.status == "failed" and "no post-copy" in outcome.reason, outcome.reason


# the two halves: what the destination's vCPUs wait for, what the source sends next -------------------------
def test_a_backlog_sends_each_missing_page_once_asked_for_pages_first():
    backlog = Backlog(np.array([2, 4, 6, 8, 10, 12]))
    assert backlog.next_pushed(2).tolist() == [2, 4]
    backlog.request(np.array([10, 4]))  # 4 is on its way already
    assert backlog.next_requested().tolist() == [10] and backlog.next_requested().size == 0
    assert backlog.next_pushed(3).tolist() == [6, 8, 12] and backlog.next_pushed(3).size == 0
    assert (backlog.requests, backlog.requested_sent, backlog.pushed) == (1, 1, 5)
    with pytest.raises(RemoteProtocolError, match="page 5, which was not missing") as info:
        backlog.request(np.array([5]))
    assert info.value.field == "page_numbers"


def test_a_vcpu_waits_for_its_page_asks_once_and_wakes_when_it_arrives():
    faults = Faults(128, vcpus=2)
    rung = []
    faults.doorbell = type("Bell", (), {"ring": lambda self: rung.append(1)})()
    faults.mark(np.array([5, 70]))
    waited = []
    waiters = [threading.Thread(target=lambda: waited.append(faults.wait(70, lambda: False))) for _ in range(2)]
    for waiter in waiters:
        waiter.start()
    wait_until(lambda: faults.requested == 1)
    assert faults.take_requests().tolist() == [70] and len(rung) == 1  # asked for once, though two wait
    faults.arrived(np.array([70]))
    for waiter in waiters:
        waiter.join(5)
    assert len(waited) == 2 and faults.left() == 1 and faults.requested_placed == 1 and faults.all_blocked_s > 0
    with pytest.raises(RemoteProtocolError, match="page 70 arrived in post-copy but is not missing"):
        faults.check_missing(np.array([5, 70], dtype=np.uint32))
    faults.check_missing(np.array([5], dtype=np.uint32))


def test_post_copy_expects_the_downtime_of_what_its_blackout_sends():
    # after one pass, flat out: pre-copy's expectation (every dirty page) would be far above what post-copy's
    # blackout sends, the device state and one page number per missing page
    s = scenario(postcopy_after_passes=1, device_state_bytes=256 << 10)
    report, outcome, guest, destination = run_pair(s, *link_pair())
    assert report.status == "completed" and report.postcopy is not None, report.reason
    first = report.passes[0]
    bandwidth = first.bytes_sent / first.duration_s
    expected_s = (s.migration.device_state_bytes + first.remaining_pages * 4) / bandwidth
    assert report.summary["expected-downtime"] == pytest.approx(expected_s * 1e3)
    assert expected_s < first.remaining_pages * PAGE / bandwidth / 10


def test_a_serving_receiver_hands_the_new_connection_to_the_paused_migration_of_its_session():
    receiver = PrecopyProcess("receive", "--listen", "tcp://127.0.0.1:0", "--serve", "--json", "--timeout", "2s")
    s = scenario(codec="raw", postcopy_after_passes=1, max_bandwidth_bytes_per_s=50e6, timeout_s=2.0)
    try:
        link = CutLink(receiver.wait_listening(), s.migration.timeout_s)
        said = CutInPostcopy(link, after=40)
        guest = GuestMemory(s.guest)
        try:
            with Workload(guest, dataclasses.replace(s.workload, seed=s.workload.seed + 1)) as vcpus:
                report = Source(s, guest, vcpus, link, progress=said).run()
        finally:
            link.close()
    finally:
        receiver.signal(signal.SIGTERM)
        status, out, err = receiver.finish()
    assert link.cuts == 1 and report.status == "completed", report.reason
    assert report.postcopy.recoveries == 1 and report.digests_match
    outcomes = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [o["status"] for o in outcomes] == ["completed"] and outcomes[0]["digest"] == report.source_digest
    assert "post-copy recovered after " in err and "Traceback" not in err


def test_with_preempt_the_requested_pages_cross_on_a_channel_of_their_own():
    s = scenario(codec="raw", channels=2, postcopy_after_passes=1, postcopy_preempt=True,
                 max_bandwidth_bytes_per_s=50e6)
    assert s.migration.data_channels == 3
    report, outcome, guest, destination = over_loopback(s)
    assert report.status == "completed" and outcome.status == "completed", (report.reason, outcome.reason)
    postcopy = report.postcopy
    assert postcopy.requested_sent > 0 and report.digests_match
    # the preempt channel's applier placed exactly the requested pages; the push went round the other two
    preempt = destination.hosted.appliers[2]
    assert preempt.applied == postcopy.requested_sent
    assert sum(applier.applied for applier in destination.hosted.appliers[:2]) == (
        sum(p.pages_sent for p in report.passes) + postcopy.pushed_pages)
    assert_source_memory_plus_the_destination_writes(guest.data, destination.migrated, destination.workload)


def test_preempt_is_post_copy():
    preempt = MigrationOptions(postcopy_preempt=True)
    assert preempt.postcopy and preempt.data_channels == 2
    assert not MigrationOptions().postcopy and MigrationOptions().data_channels == 1


def test_a_destination_that_cannot_send_postcopy_done_keeps_the_whole_guest(monkeypatch):
    """Every page in and the digest matched: the guest is whole here. A link that breaks as POSTCOPY_DONE leaves
    does not discard it (the source, which never hears it, reports the guest lost: the two-generals limit)."""
    send = Destination.send

    def breaks_at_done(destination, frames):
        if HEADER.unpack(bytes(frames[0]))[2] == MsgType.POSTCOPY_DONE:
            raise LinkBroken(SOURCE_GONE)
        send(destination, frames)

    monkeypatch.setattr(Destination, "send", breaks_at_done)
    s = scenario(codec="raw", postcopy_after_passes=1, max_bandwidth_bytes_per_s=50e6, timeout_s=1.0,
                 postcopy_recover_s=1.0)
    links = loopback(s)
    try:
        report, outcome, guest, destination = run_pair(s, *links)
    finally:
        for link in links:
            link.close()
    assert outcome.status == "completed" and outcome.digest == report.source_digest, outcome
    assert destination.guest is not None  # kept, not discarded
    assert report.status == "lost", report.reason
