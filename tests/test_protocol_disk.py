"""A mirrored disk on the wire: data messages flagged DISK, their geometry, and their counts in a pass."""

import numpy as np
import pytest

from emulator.dataplane.batches import BatchApplier, BatchEncoder
from emulator.dataplane.codecs import encode_batch
from emulator.vm.disk import DiskImage, DiskSpec
from emulator.vm.guest import GuestMemory, GuestSpec
from emulator.vm.scenario import MigrationOptions, Scenario
from emulator.vm.workload import WorkloadSpec
from emulator.wire import protocol
from emulator.wire.protocol import (HEADER, Codec, Decoder, Flags, LocalProtocolError, MsgType, RemoteProtocolError,
                                    encode_pages, encode_zero_pages)
from emulator.wire.protocol_engines import (DataPages, DestinationProtocol, FinalPassComplete, PassComplete,
                                            SourceProtocol, Switchover)

PAGE = 4096
BLOCK = 16 << 10
N_PAGES = 1024
N_BLOCKS = 64
MAX_PAYLOAD = 8 * BLOCK


@pytest.fixture
def decoder():
    return Decoder(PAGE, N_PAGES, MAX_PAYLOAD, disk=(BLOCK, N_BLOCKS))


def random_bytes(n_bytes, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()


def disk_pages(blocks, flags=Flags.DISK, unit=BLOCK, count=None):
    """A RAW PAGES message of `blocks` (or runs, with RUNS), of `count` units of `unit` bytes."""
    count = len(blocks) if count is None else count
    return encode_pages(0, 0, blocks, random_bytes(count * unit), Codec.RAW, count * unit, flags)


def expect_error(decoder, frames, field):
    """The text of the RemoteProtocolError decoding `frames` raises, checked to name `field`."""
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.decode(frames)
    assert caught.value.field == field, str(caught.value)
    return str(caught.value)


# --------------------------------------------------------------------------
# Frames


@pytest.mark.parametrize("numbers, flags", [
    ([63, 0, 5], Flags.DISK),
    ([[10, 3]], Flags.DISK | Flags.RUNS),
    ([7], Flags.DISK | Flags.RAW_FALLBACK),
    ([[0, 2], [62, 2]], Flags.DISK | Flags.RUNS | Flags.RAW_FALLBACK),
])
def test_disk_blocks_cross_in_pages_messages(decoder, numbers, flags):
    blocks = protocol.expand_runs(numbers).tolist() if flags & Flags.RUNS else numbers
    payload = random_bytes(len(blocks) * BLOCK, seed=len(blocks))
    frames = encode_pages(3, 1, numbers, payload, Codec.RAW, len(blocks) * BLOCK, flags)
    assert HEADER.unpack(frames[0])[3] == int(flags) and frames[2] is payload
    message = decoder.decode(frames)
    assert (message.type, message.flags, message.seq, message.pass_no) == (MsgType.PAGES, flags, 3, 1)
    assert (message.page_count, message.raw_len, message.encoded_len) == (len(blocks), len(payload), len(payload))
    assert message.page_numbers.tolist() == blocks and bytes(message.payload) == payload


def test_disk_blocks_cross_compressed(decoder):
    raw = np.zeros(4 * BLOCK, dtype=np.uint8)
    raw[::97] = 5
    codec, flags, payload = encode_batch(Codec.LZ4, raw)
    assert (codec, flags) == (Codec.LZ4, Flags.NONE)
    message = decoder.decode(encode_pages(0, 0, [1, 2, 3, 9], payload, Codec.LZ4, raw.size, Flags.DISK))
    assert (message.codec, message.flags, message.raw_len, message.page_count) == (Codec.LZ4, Flags.DISK,
                                                                                   4 * BLOCK, 4)


@pytest.mark.parametrize("numbers, flags, blocks", [
    ([4, 63], Flags.DISK, [4, 63]),
    ([[60, 4]], Flags.DISK | Flags.RUNS, [60, 61, 62, 63]),
])
def test_zero_blocks_cross_as_their_numbers(decoder, numbers, flags, blocks):
    frames = encode_zero_pages(2, 0, numbers, BLOCK, flags)
    assert HEADER.unpack(frames[0])[3] == int(flags) and frames[2] == b""
    message = decoder.decode(frames)
    assert (message.type, message.flags, message.page_count, message.raw_len) == (MsgType.ZERO_PAGES, flags,
                                                                                  len(blocks), len(blocks) * BLOCK)
    assert message.page_numbers.tolist() == blocks


def test_zero_blocks_are_never_a_raw_fallback():
    with pytest.raises(LocalProtocolError) as caught:
        encode_zero_pages(0, 0, [1], BLOCK, Flags.DISK | Flags.RAW_FALLBACK)
    assert caught.value.field == "flags" and "got 0x06, expected only bits of 0x05" in str(caught.value)


def test_a_decoder_without_disk_geometry_refuses_disk_messages():
    decoder = Decoder(PAGE, N_PAGES, MAX_PAYLOAD)
    text = expect_error(decoder, disk_pages([1]), "flags")
    assert text == "flags: DISK on PAGES, but this migration mirrors no disk"
    text = expect_error(decoder, encode_zero_pages(0, 0, [1], BLOCK, Flags.DISK), "flags")
    assert text == "flags: DISK on ZERO_PAGES, but this migration mirrors no disk"
    assert decoder.decode(disk_pages([1], Flags.NONE, unit=PAGE)).page_numbers.tolist() == [1]  # pages still do
    assert "before negotiation" in expect_error(Decoder(), disk_pages([1]), "type")


def test_disk_messages_are_sized_in_blocks_and_page_messages_in_pages(decoder):
    text = expect_error(decoder, disk_pages([1, 2], unit=PAGE), "raw_len")  # two pages' bytes for two blocks
    assert text == "raw_len: got 8192, expected page_count*page_size = 2*16384 = 32768"
    text = expect_error(decoder, disk_pages([1, 2], Flags.NONE), "raw_len")  # two blocks' bytes for two pages
    assert text == "raw_len: got 32768, expected page_count*page_size = 2*4096 = 8192"
    assert "2*16384 = 32768" in expect_error(decoder, encode_zero_pages(0, 0, [1, 2], PAGE, Flags.DISK), "raw_len")
    assert decoder.decode(disk_pages([1, 2], Flags.NONE, unit=PAGE)).raw_len == 2 * PAGE


def test_disk_payloads_are_held_to_the_largest_payload(decoder):
    blocks = list(range(9))  # 9 blocks: 144 KiB, above the 128 KiB negotiated
    text = expect_error(decoder, disk_pages(blocks), "raw_len")
    assert text == f"raw_len: got {9 * BLOCK}, expected <= max_payload_bytes {MAX_PAYLOAD}"
    assert decoder.decode(disk_pages(blocks[:8])).page_count == 8


def test_block_numbers_are_checked_against_the_disk_and_page_numbers_against_memory(decoder):
    assert decoder.decode(disk_pages([N_BLOCKS - 1])).page_numbers.tolist() == [63]
    text = expect_error(decoder, disk_pages([0, N_BLOCKS]), "page_numbers")
    assert text == "page_numbers: got page 64, expected < n_pages 64"
    assert decoder.decode(disk_pages([N_BLOCKS], Flags.NONE, unit=PAGE)).page_numbers.tolist() == [64]  # a page
    assert "got page 1024" in expect_error(decoder, disk_pages([N_PAGES], Flags.NONE, unit=PAGE), "page_numbers")
    small_memory = Decoder(PAGE, 16, MAX_PAYLOAD, disk=(BLOCK, N_BLOCKS))  # more blocks than pages
    assert small_memory.decode(encode_zero_pages(0, 0, [40], BLOCK, Flags.DISK)).page_numbers.tolist() == [40]
    text = expect_error(small_memory, encode_zero_pages(0, 0, [40], PAGE), "page_numbers")
    assert text == "page_numbers: got page 40, expected < n_pages 16"


def test_a_run_of_blocks_may_not_pass_the_end_of_the_disk(decoder):
    runs = Flags.DISK | Flags.RUNS
    text = expect_error(decoder, encode_zero_pages(0, 0, [[60, 5]], BLOCK, runs), "page_numbers")
    assert text == "page_numbers: run ends at page 65, expected end <= n_pages 64"
    assert "run ends at page 65" in expect_error(decoder, disk_pages([[60, 5]], runs, count=5), "page_numbers")
    assert decoder.decode(encode_zero_pages(0, 0, [[60, 5]], PAGE, Flags.RUNS)).page_count == 5  # pages 60..64
    text = expect_error(decoder, encode_zero_pages(0, 0, [[0, 65]], BLOCK, runs), "page_count")
    assert text == "page_count: got 65, expected 1..64 (n_pages or n_blocks)"


@pytest.mark.parametrize("limits, disk", [
    ((None, None, None), (BLOCK, N_BLOCKS)),  # a disk, but no negotiated memory
    ((PAGE, N_PAGES, MAX_PAYLOAD), (0, N_BLOCKS)),
    ((PAGE, N_PAGES, MAX_PAYLOAD), (BLOCK, 0)),
    ((PAGE, N_PAGES, MAX_PAYLOAD), (BLOCK, -1)),
    ((PAGE, N_PAGES, MAX_PAYLOAD), (BLOCK, (1 << 32) + 1)),
    ((PAGE, N_PAGES, MAX_PAYLOAD), (True, N_BLOCKS)),
    ((PAGE, N_PAGES, MAX_PAYLOAD), (float(BLOCK), N_BLOCKS)),
    ((PAGE, N_PAGES, MAX_PAYLOAD), (BLOCK,)),
    ((PAGE, N_PAGES, MAX_PAYLOAD), (BLOCK, N_BLOCKS, 1)),
    ((PAGE, N_PAGES, MAX_PAYLOAD), 5),
    ((PAGE, N_PAGES, MAX_PAYLOAD), [BLOCK, N_BLOCKS]),
])
def test_bad_disk_geometry_is_refused(limits, disk):
    with pytest.raises(ValueError, match=r"^got disk=.*: expected \(block_size, n_blocks\) with the other limits$"):
        Decoder(*limits, disk=disk)


def test_a_disk_of_2_to_the_32_blocks_is_geometry_enough():
    decoder = Decoder(PAGE, N_PAGES, MAX_PAYLOAD, disk=(BLOCK, 1 << 32))
    top = (1 << 32) - 1
    assert decoder.decode(encode_zero_pages(0, 0, [top], BLOCK, Flags.DISK)).page_numbers.tolist() == [top]


# --------------------------------------------------------------------------
# Engines: a pass of memory and disk, joined in memory


CHANNELS = 2
RESUMED_BODY = {"digest": "d", "storage_token": "t", "final_pages_s": 0.01, "digest_check_s": 0.0,
                "resume_s": 0.001, "disk_digest": "dk", "disk_sync_s": 0.002}


def scenario(storage="mirror"):
    # batches of 8 pages (32 KiB) hold 2 blocks
    return Scenario(GuestSpec(64 * PAGE, fill="mixed", seed=1), WorkloadSpec(),
                    MigrationOptions(channels=CHANNELS, batch_pages=8, storage=storage),
                    disk=DiskSpec(32 * BLOCK, BLOCK, fill="mixed", seed=2))


def joined(s):
    """(source, destination) engines past HELLO and ACCEPT for scenario `s`."""
    source, destination = SourceProtocol(CHANNELS, PAGE, s.disk.block_size), DestinationProtocol()
    destination.receive_hello(destination.check_hello(source.hello(s.to_dict(), "s")))
    assert source.receive(destination.accept(s, [5001, 5002])).type == MsgType.ACCEPT
    return source, destination


class Guests:
    """A source guest with its disk file, a destination receiving both, and their encoders and appliers."""

    def __init__(self, s, directory):
        (directory / "source").mkdir()
        (directory / "received").mkdir()
        self.memory, self.memory_copy = GuestMemory(s.guest), GuestMemory.blank(s.guest)
        self.disk = DiskImage.create(s.disk, str(directory / "source" / s.disk.name))
        self.disk_copy = DiskImage.receiving(s.disk, str(directory / "received"))
        self.memory_encoder = BatchEncoder(self.memory, Codec.RAW, s.migration.batch_pages)
        self.disk_encoder = BatchEncoder(self.disk.blocks, Codec.LZ4, s.disk_batch_blocks, flags=Flags.DISK)
        self.memory_applier, self.disk_applier = BatchApplier(self.memory_copy), BatchApplier(self.disk_copy.blocks)

    def batches(self, pages, blocks):
        """The batches that send `pages` of memory and `blocks` of the disk, memory and disk interleaved."""
        memory = list(self.memory_encoder.batches(np.asarray(pages, dtype=np.int64)))
        disk = list(self.disk_encoder.batches(np.asarray(blocks, dtype=np.int64)))
        mixed = [batch for pair in zip(memory, disk) for batch in pair]
        return mixed + memory[len(disk):] + disk[len(memory):]

    def apply(self, events):
        for event in events:
            if isinstance(event, DataPages):
                message = event.message
                (self.disk_applier if message.flags & Flags.DISK else self.memory_applier).apply(message)

    def copies_are_equal(self):
        return (np.array_equal(self.memory.data, self.memory_copy.data)
                and np.array_equal(self.disk.blocks.data, self.disk_copy.blocks.data))

    def close(self):
        for encoder in (self.memory_encoder, self.disk_encoder):
            encoder.close()
        self.disk.close()
        self.disk_copy.discard()


@pytest.fixture
def guests(tmp_path):
    made = Guests(scenario(), tmp_path)
    yield made
    made.close()


def send(source, destination, batches):
    """The events of each batch's data message, sent round-robin."""
    return [destination.receive_data(*source.data(batch)) for batch in batches]


def test_a_pass_of_memory_and_disk_completes_when_pass_end_promises_both(guests):
    s = scenario()
    source, destination = joined(s)
    batches = guests.batches(range(s.guest.n_pages), range(s.disk.n_blocks))
    kinds = {(batch.kind, bool(batch.flags & Flags.DISK)) for batch in batches}
    assert kinds == {(kind, disk) for kind in (MsgType.PAGES, MsgType.ZERO_PAGES) for disk in (False, True)}
    events = send(source, destination, batches)
    assert [[type(e) for e in es] for es in events] == [[DataPages]] * len(batches)
    for es in events:
        guests.apply(es)
    assert destination.receive_control(source.pass_end(s.guest.n_pages, s.disk.n_blocks)) == (PassComplete(0),)
    assert guests.copies_are_equal()
    ack = source.receive(destination.acknowledge_pass(s.guest.n_pages, 0.0))
    assert (ack.body["pass"], source.pass_no, destination.pass_no) == (0, 1, 1)

    # pass 1: blocks written since, one of them now zero, and no memory
    guests.disk.blocks.data[3 * BLOCK : 5 * BLOCK] = 7
    guests.disk.blocks.data[20 * BLOCK : 21 * BLOCK] = 0
    batches = guests.batches([], [3, 4, 20])
    assert [(b.kind, b.pages, b.flags & Flags.DISK) for b in batches] == [
        (MsgType.ZERO_PAGES, 1, Flags.DISK), (MsgType.PAGES, 2, Flags.DISK)]
    held = [source.data(batch) for batch in batches]
    assert destination.receive_control(source.pass_end(0, 3)) == ()  # before its data this time
    events = [destination.receive_data(*frames) for frames in held]
    assert events[-1][-1] == PassComplete(1)
    for es in events:
        guests.apply(es)
    assert guests.copies_are_equal()
    source.receive(destination.acknowledge_pass(0, 0.0))

    # the final pass: one more block, in the blackout
    assert destination.receive_control(source.switchover("converged")) == (Switchover(2),)
    guests.disk.blocks.data[31 * BLOCK :] = 9
    held = [source.data(batch) for batch in guests.batches([], [31])]
    assert destination.receive_control(source.device_state(bytes(s.migration.device_state_bytes)))[0].message
    assert destination.receive_control(source.complete(0, "d", "dd", "t", 1, "dk")) == ()
    final = destination.receive_data(*held[0])
    guests.apply(final)
    assert type(final[-1]) is FinalPassComplete
    assert (final[-1].complete.body["blocks"], final[-1].complete.body["disk_digest"]) == (1, "dk")
    assert guests.copies_are_equal()
    resumed = source.receive(destination.resumed(RESUMED_BODY))
    assert (resumed.type, resumed.body["disk_digest"]) == (MsgType.RESUMED, "dk")
    assert source.receive(destination.announce("here")).type == MsgType.ANNOUNCE
    assert source.state == destination.state == "DONE"


@pytest.mark.parametrize("pass_end_first", [False, True])
def test_a_pass_end_promising_a_block_more_than_arrived_is_refused_when_the_pass_completes(guests, pass_end_first):
    s = scenario()
    source, destination = joined(s)
    held = [source.data(batch) for batch in guests.batches(range(s.guest.n_pages), range(s.disk.n_blocks))]
    pass_end = source.pass_end(s.guest.n_pages, s.disk.n_blocks + 1)
    if pass_end_first:
        assert destination.receive_control(pass_end) == ()
        assert all(len(destination.receive_data(*frames)) == 1 for frames in held[:-1])
        with pytest.raises(RemoteProtocolError) as caught:
            destination.receive_data(*held[-1])
    else:
        for frames in held:
            destination.receive_data(*frames)
        with pytest.raises(RemoteProtocolError) as caught:
            destination.receive_control(pass_end)
    assert caught.value.field == "body.blocks"
    assert str(caught.value) == "body.blocks: announced 33 blocks, the messages held 32"
    assert destination.state == "FAILED"


def test_blocks_are_not_counted_as_pages(guests):
    s = scenario()
    source, destination = joined(s)
    send(source, destination, guests.batches(range(s.guest.n_pages), range(s.disk.n_blocks)))
    with pytest.raises(RemoteProtocolError) as caught:
        destination.receive_control(source.pass_end(s.guest.n_pages + s.disk.n_blocks, 0))
    assert str(caught.value) == "body.pages: announced 96 pages, the messages held 64"


def test_a_pass_end_with_a_negative_block_count_is_refused():
    source, destination = joined(scenario())
    with pytest.raises(RemoteProtocolError) as caught:
        destination.receive_control(source.pass_end(0, -1))
    assert (caught.value.field, str(caught.value)) == ("body.blocks", "body.blocks: got -1")


def test_a_pass_end_without_a_block_count_is_refused():
    source, destination = joined(scenario())
    frames = protocol.encode_control(MsgType.PASS_END, 1, 0, {"pass": 0, "messages": [0, 0], "pages": 0})
    with pytest.raises(RemoteProtocolError) as caught:
        destination.receive_control(frames)
    assert caught.value.field == "body.blocks" and destination.state == "FAILED"


def test_a_block_past_the_mirrored_disk_is_refused():
    source, destination = joined(scenario())
    with pytest.raises(RemoteProtocolError) as caught:
        destination.receive_data(0, encode_zero_pages(0, 0, [32], BLOCK, Flags.DISK))
    assert str(caught.value) == "page_numbers: got page 32, expected < n_pages 32"
    assert destination.state == "FAILED"


def test_disk_data_to_a_destination_with_shared_storage_is_refused():
    s = scenario(storage="shared")
    source, destination = joined(s)
    memory = GuestMemory(s.guest)
    encoder = BatchEncoder(memory, Codec.RAW, s.migration.batch_pages)
    try:
        first = next(iter(encoder.batches(np.arange(8, dtype=np.int64))))
    finally:
        encoder.close()
    assert type(destination.receive_data(*source.data(first))[0]) is DataPages  # memory still crosses
    with pytest.raises(RemoteProtocolError) as caught:
        destination.receive_data(1, encode_zero_pages(0, 0, [0], BLOCK, Flags.DISK))
    assert caught.value.field == "flags"
    assert str(caught.value) == "flags: DISK on ZERO_PAGES, but this migration mirrors no disk"
    assert destination.state == "FAILED"
