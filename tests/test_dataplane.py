"""The data plane: every channel placed on a thread of its own, memory byte-identical however many there are."""

import math
import threading

import numpy as np
import pytest

from emulator.dataplane.batches import Batch
from emulator.dataplane.digest import RunningDigest
from emulator.dataplane.transport import DestinationLink, SourceLink
from emulator.destination.receiver import Destination
from emulator.source.policy import PolicyConfig
from emulator.vm.guest import GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec
from emulator.wire import protocol
from emulator.wire.protocol import Flags, MsgType
from emulator.wire.protocol_engines import DestinationProtocol, PassComplete, SourceProtocol
from kernels import pages
from tests.engines import run_pair
from tests.fakelink import link_pair, wait_until

PAGE = 4096
CODECS = {  # name -> the migration options that select it
    "raw": {"codec": "raw"},
    "lz4": {"codec": "lz4"},
    "xbzrle": {"codec": "raw", "xbzrle": True, "xbzrle_cache_bytes": 16 << 20},
}


def scenario(channels, codec="raw", verify="incremental", memory_pages=4096, **migration):
    return Scenario(GuestSpec(memory_pages * PAGE, fill="mixed", seed=5),
                    WorkloadSpec(vcpus=2, rate_pages_per_s=math.inf, pattern="hotset", seed=6),
                    MigrationOptions(channels=channels, verify=verify, timeout_s=10.0, **CODECS[codec],
                                     policy=PolicyConfig(max_passes=4, downtime_limit_s=1e-9, stall_passes=None),
                                     **migration))


def assert_byte_identical_under_writers_flat_out(s, links, runs):
    for _ in range(runs):
        report, outcome, guest, destination = run_pair(s, *links())
        assert report.status == "completed" and outcome.status == "completed", (report.reason, outcome.reason)
        assert report.switchover_reason == "max-passes" and len(report.passes) == 4
        assert report.blackout.final_pages > 0  # the writers really dirtied pages to the end
        assert np.array_equal(destination.migrated, guest.data)
        assert report.digests_match and report.source_digest == guest.digest()
        assert outcome.pages_applied == sum(p.pages_sent for p in report.passes) + report.blackout.final_pages


@pytest.mark.parametrize("channels", [1, 2, 4, 8])
@pytest.mark.parametrize("codec, verify", [("raw", "incremental"), ("raw", "full"), ("lz4", "incremental"),
                                           ("lz4", "full"), ("xbzrle", "incremental")])
def test_every_channel_count_arrives_byte_identical_with_writers_flat_out(channels, codec, verify):
    assert_byte_identical_under_writers_flat_out(scenario(channels, codec, verify), link_pair, runs=2)


@pytest.mark.parametrize("codec, channels, memory_pages", [("raw", 4, 4096), ("lz4", 8, 4096), ("raw", 16, 8192)])
def test_real_sockets_arrive_byte_identical_with_writers_flat_out(codec, channels, memory_pages):
    s = scenario(channels, codec, memory_pages=memory_pages)
    made = []

    def loopback():  # an I/O thread per channel, as migrate's receiver has
        destination = DestinationLink("tcp://127.0.0.1:0", s.migration.timeout_s, max_channels=channels)
        made.extend([destination, SourceLink(destination.endpoint, s.migration.timeout_s, channels=channels)])
        return made[-1], destination

    try:
        assert_byte_identical_under_writers_flat_out(s, loopback, runs=3)
    finally:
        for link in made:
            link.close()


# the engine's data API, from threads -----------------------------------------------------------------------


def joined(channels):
    source, destination = SourceProtocol(channels, PAGE), DestinationProtocol()
    s = Scenario(GuestSpec(64 * PAGE), migration=MigrationOptions(channels=channels))
    destination.receive_hello(destination.check_hello(source.hello(s.to_dict(), "s")))
    source.receive(destination.accept(s, list(range(5001, 5001 + channels))))
    return source, destination


def zero_batch(first):
    return Batch(MsgType.ZERO_PAGES, np.array([first, first + 1], dtype=np.int64), Flags.NONE, pages=2)


def test_a_pass_is_complete_only_once_every_message_is_applied_not_when_the_last_is_checked():
    source, destination = joined(2)
    checked = [(channel, destination.check_data(channel, frames))
               for channel, frames in (source.data(zero_batch(0)), source.data(zero_batch(2)))]
    assert destination.data_applied(*checked[1]) == ()
    assert destination.receive_control(source.pass_end(4)) == ()  # announced, but channel 0's is not in memory
    assert destination.data_applied(*checked[0]) == (PassComplete(0),)


def test_channels_checked_and_applied_on_threads_complete_the_pass_exactly_once():
    channels, per_channel = 8, 200
    source, destination = joined(channels)
    frames = {c: [] for c in range(channels)}
    for index in range(channels * per_channel):
        channel, message = source.data(zero_batch((index * 2) % 62))
        frames[channel].append(message)
    closing, barrier = [], threading.Barrier(channels + 1)

    def channel_thread(channel):
        barrier.wait()
        for message in frames[channel]:
            closing.extend(destination.data_applied(channel, destination.check_data(channel, message)))

    threads = [threading.Thread(target=channel_thread, args=(c,)) for c in range(channels)]
    for thread in threads:
        thread.start()
    barrier.wait()
    closing.extend(destination.receive_control(source.pass_end(channels * per_channel * 2)))  # during their work
    for thread in threads:
        thread.join()
    assert closing == [PassComplete(0)]
    destination.acknowledge_pass(channels * per_channel * 2, 0.0)
    assert destination.pass_no == 1


def test_a_data_message_in_a_state_without_data_is_refused_and_the_state_left_to_its_owner():
    source, destination = joined(1)
    channel, frames = source.data(zero_batch(0))
    destination.receive_control(source.postcopy("postcopy-after", "d", "t"))  # no data until the guest resumed
    with pytest.raises(protocol.RemoteProtocolError, match="cannot receive ZERO_PAGES in state POSTCOPY_SWITCH"):
        destination.check_data(channel, frames)
    assert destination.state == "POSTCOPY_SWITCH"  # the channel's thread wrote nothing: the control thread's fail() does
    with pytest.raises(protocol.RemoteProtocolError):
        destination.fail(protocol.RemoteProtocolError("type", "from a channel"))
    assert destination.state == "FAILED"


# through the destination ----------------------------------------------------------------------------------


def test_a_source_that_announces_fewer_messages_than_a_channel_delivered_is_refused():
    s = scenario(3, memory_pages=64)
    source_link, destination_link = link_pair()
    destination = Destination(destination_link)
    ended = {}
    thread = threading.Thread(target=lambda: ended.update(outcome=destination.run(hello_timeout_s=5)))
    thread.start()
    engine = SourceProtocol(3, PAGE)
    source_link.send_control(engine.hello(s.to_dict(), "s"))
    while (reply := engine.receive(source_link.recv_control())).type != MsgType.ACCEPT:
        pass
    source_link.open_data(reply.field("data", list), PAGE)
    source_link.send_data(*engine.data(zero_batch(0)))  # channel 0
    wait_until(lambda: destination.pages_applied == 2)  # its thread checked and placed it
    engine.messages = [0, 0, 0]  # and a PASS_END that says nothing came
    source_link.send_control(engine.pass_end(0))
    while (answer := engine.receive(source_link.recv_control())).type == MsgType.HEARTBEAT:
        pass
    thread.join(10)
    assert answer.type == MsgType.ABORT and "announced [0, 0, 0], already received [1, 0, 0]" in answer.body["reason"]
    assert ended["outcome"].status == "failed" and destination.protocol.state == "FAILED"


def test_digest_parts_on_threads_add_up_to_the_memory_digest():
    memory = np.zeros(256 * PAGE, dtype=np.uint8)
    running = RunningDigest(256, PAGE)
    parts = [running.part() for _ in range(4)]
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 256 * PAGE, dtype=np.uint8)

    def place(index):  # pages index, index + 4, ...: distinct per thread, as a pass's are per channel
        chosen = np.arange(index, 256, 4)
        parts[index].absorb(pages.scatter_and_digest(memory, PAGE, chosen, data[: chosen.size * PAGE],
                                                     running.table))
        parts[index].update_zero(chosen[::3])
        pages.zero_pages(memory, PAGE, chosen[::3])

    threads = [threading.Thread(target=place, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert running.value() == pages.memory_digest(memory, PAGE)
