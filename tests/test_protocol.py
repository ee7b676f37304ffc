"""Tests of emulator.wire.protocol: round trips, one test per validation rule, fuzzing."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.wire.protocol import (
    CONTROL_TYPES,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_CONTROL_BYTES,
    VERSION,
    Codec,
    Decoder,
    Flags,
    LocalProtocolError,
    MsgType,
    ProtocolError,
    RemoteProtocolError,
    encode_control,
    encode_device_state,
    encode_page_list,
    encode_pages,
    encode_zero_pages,
    expand_runs,
    expect_seq,
    pages_to_runs,
)

PAGE_SIZE = 4096
N_PAGES = 1024
MAX_PAYLOAD = 64 * PAGE_SIZE
FIELDS = (
    "magic", "version", "type", "flags", "seq", "pass_no",
    "page_count", "codec", "pad", "raw_len", "encoded_len",
)  # fmt: skip


@pytest.fixture
def decoder() -> Decoder:
    return Decoder(PAGE_SIZE, N_PAGES, MAX_PAYLOAD)


def raw_batch(n_pages: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n_pages * PAGE_SIZE, dtype=np.uint8).tobytes()


def pages_frames() -> list:
    """A valid RAW PAGES message of pages 5, 6, 7, 100."""
    pages = np.array([5, 6, 7, 100])
    return encode_pages(9, 2, pages, raw_batch(4), Codec.RAW, 4 * PAGE_SIZE)


def with_header(frames: list, **changes) -> list:
    """Copy of `frames` with the named header fields replaced."""
    values = dict(zip(FIELDS, HEADER.unpack(frames[0])))
    values.update(changes)
    return [HEADER.pack(*(values[f] for f in FIELDS)), frames[1], frames[2]]


def expect_error(decoder: Decoder, frames, field: str) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decoder.decode(frames)
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(f"{field}: ")
    return info.value


# --------------------------------------------------------------------------
# Layout


def test_header_layout_is_fixed_little_endian():
    assert HEADER_SIZE == 44
    frames = encode_control(MsgType.HEARTBEAT, 0x0102030405060708, 0x0A0B0C0D, {})
    h = frames[0]
    assert h[0:4] == b"PCPY"
    assert h[4:6] == b"\x06\x00"  # version 6, little-endian
    assert h[6] == MsgType.HEARTBEAT == 13
    assert h[7] == 0
    assert h[8:16] == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert h[16:20] == bytes([0x0D, 0x0C, 0x0B, 0x0A])
    assert h[20:24] == b"\x00" * 4  # page_count
    assert h[24] == Codec.RAW
    assert h[25:28] == b"\x00\x00\x00"
    assert h[28:36] == (2).to_bytes(8, "little")  # raw_len of b"{}"
    assert h[36:44] == (2).to_bytes(8, "little")
    assert frames[1] == b""
    assert frames[2] == b"{}"


def test_enum_wire_values():
    assert [int(t) for t in MsgType] == list(range(1, 23))
    assert [t.name for t in MsgType] == [
        "HELLO", "ACCEPT", "REFUSE", "PAGES", "ZERO_PAGES", "PASS_END", "SWITCHOVER",
        "DEVICE_STATE", "COMPLETE", "RESUMED", "ANNOUNCE", "ABORT", "HEARTBEAT", "CHECK", "VERDICT",
        "POSTCOPY", "MISSING", "PAGE_REQUEST", "POSTCOPY_END", "POSTCOPY_DONE", "RECOVER", "RECOVERED",
    ]  # fmt: skip
    assert (int(Flags.RUNS), int(Flags.RAW_FALLBACK)) == (1, 2)
    assert (int(Codec.RAW), int(Codec.LZ4)) == (0, 1)
    assert MsgType.PAGES not in CONTROL_TYPES and MsgType.DEVICE_STATE not in CONTROL_TYPES
    assert len(CONTROL_TYPES) == 17 and MsgType.MISSING not in CONTROL_TYPES and MsgType.PAGE_REQUEST not in CONTROL_TYPES


# --------------------------------------------------------------------------
# Round trips


def test_pages_raw_round_trip_without_copy(decoder):
    payload = bytearray(raw_batch(4, seed=1))
    pages = np.array([5, 6, 7, 100], dtype=np.int64)
    frames = encode_pages(9, 2, pages, payload, Codec.RAW, len(payload))
    assert len(frames) == 3
    assert frames[2] is payload
    assert frames[1] == np.array([5, 6, 7, 100], dtype="<u4").tobytes()
    msg = decoder.decode(frames)
    assert msg.type is MsgType.PAGES
    assert (msg.seq, msg.pass_no, msg.page_count) == (9, 2, 4)
    assert msg.codec is Codec.RAW and msg.flags == Flags.NONE
    assert msg.raw_len == msg.encoded_len == 4 * PAGE_SIZE
    assert msg.page_numbers.dtype == np.dtype("<u4")
    assert msg.page_numbers.tolist() == [5, 6, 7, 100]
    assert msg.runs is None
    assert msg.body is None
    assert msg.payload.readonly and msg.page_numbers.flags.writeable is False
    # The decoded message views the received frames: no copy on the way in.
    assert np.shares_memory(np.frombuffer(msg.payload, np.uint8), np.frombuffer(payload, np.uint8))
    assert np.shares_memory(msg.page_frame, np.frombuffer(frames[1], np.uint8))
    assert bytes(msg.payload) == bytes(payload)


def test_pages_numpy_payload_passes_through(decoder):
    payload = np.frombuffer(raw_batch(2, seed=2), dtype=np.uint64).copy()
    frames = encode_pages(0, 0, [1, 2], payload, Codec.RAW, 2 * PAGE_SIZE)
    assert frames[2] is payload
    msg = decoder.decode(frames)
    assert msg.encoded_len == payload.nbytes
    assert np.shares_memory(np.frombuffer(msg.payload, np.uint8), payload)


def test_pages_lz4_round_trip(decoder):
    payload = b"\x01" * 100
    frames = encode_pages(1, 3, np.array([7, 0]), payload, Codec.LZ4, 2 * PAGE_SIZE)
    assert frames[2] is payload
    msg = decoder.decode(frames)
    assert msg.codec is Codec.LZ4
    assert (msg.raw_len, msg.encoded_len) == (2 * PAGE_SIZE, 100)
    assert msg.page_numbers.tolist() == [7, 0]


def test_pages_raw_fallback_round_trip(decoder):
    payload = raw_batch(1)
    frames = encode_pages(1, 0, [3], payload, Codec.RAW, PAGE_SIZE, Flags.RAW_FALLBACK)
    msg = decoder.decode(frames)
    assert msg.flags == Flags.RAW_FALLBACK and msg.codec is Codec.RAW


def test_pages_runs_round_trip(decoder):
    runs = np.array([[10, 3], [2, 1], [N_PAGES - 2, 2]])
    payload = raw_batch(6)
    frames = encode_pages(4, 1, runs, payload, Codec.RAW, 6 * PAGE_SIZE, Flags.RUNS)
    msg = decoder.decode(frames)
    assert msg.flags == Flags.RUNS
    assert msg.page_count == 6
    assert msg.runs.tolist() == [[10, 3], [2, 1], [N_PAGES - 2, 2]]
    assert msg.page_numbers.tolist() == [10, 11, 12, 2, N_PAGES - 2, N_PAGES - 1]
    assert msg.page_numbers.dtype == np.dtype("<u4")
    assert msg.page_numbers is msg.page_numbers  # expanded once, cached


def test_zero_pages_round_trip(decoder):
    frames = encode_zero_pages(3, 1, np.array([0, 9, N_PAGES - 1], dtype=np.uint32), PAGE_SIZE)
    assert frames[2] == b""
    msg = decoder.decode(frames)
    assert msg.type is MsgType.ZERO_PAGES
    assert msg.page_numbers.tolist() == [0, 9, N_PAGES - 1]
    assert (msg.page_count, msg.raw_len, msg.encoded_len) == (3, 3 * PAGE_SIZE, 0)
    assert len(msg.payload) == 0


def test_zero_pages_runs_may_exceed_max_payload(decoder):
    # ZERO_PAGES carries no payload, so it is bounded by n_pages, not max_payload.
    frames = encode_zero_pages(0, 0, [[0, N_PAGES]], PAGE_SIZE, Flags.RUNS)
    msg = decoder.decode(frames)
    assert msg.page_count == N_PAGES
    assert msg.raw_len == N_PAGES * PAGE_SIZE > MAX_PAYLOAD
    assert np.array_equal(msg.page_numbers, np.arange(N_PAGES))


def test_device_state_round_trip_without_copy(decoder):
    blob = bytearray(b"vcpu-state\x00\x01" * 10)
    frames = encode_device_state(5, 7, blob)
    assert frames[2] is blob and frames[1] == b""
    msg = decoder.decode(frames)
    assert msg.type is MsgType.DEVICE_STATE
    assert (msg.seq, msg.pass_no, msg.raw_len, msg.encoded_len) == (5, 7, 120, 120)
    assert bytes(msg.payload) == bytes(blob)
    assert msg.page_numbers.size == 0 and msg.body is None


@pytest.mark.parametrize("msg_type", sorted(CONTROL_TYPES))
def test_control_round_trip_every_type(msg_type):
    body = {"reason": "naïve ☃", "n": 3, "nested": {"a": [1, 2.5, None, True]}}
    frames = encode_control(msg_type, 11, 4, body)
    for decoder in (Decoder(), Decoder(PAGE_SIZE, N_PAGES, MAX_PAYLOAD)):
        msg = decoder.decode(frames)
        assert msg.type is msg_type
        assert msg.body == body
        assert (msg.seq, msg.pass_no, msg.page_count, msg.flags, msg.codec) == (11, 4, 0, 0, Codec.RAW)
        assert msg.raw_len == msg.encoded_len == len(frames[2])
        assert json.loads(bytes(msg.payload)) == body


def test_hello_body_example():
    body = {"page_size": 4096, "memory_bytes": 1 << 30, "codec": "lz4", "channels": 2, "session": "s1"}
    msg = Decoder().decode(encode_control(MsgType.HELLO, 0, 0, body))
    assert msg.field("page_size", int) == 4096
    assert msg.field("codec", str) == "lz4"


def test_decode_accepts_memoryviews_and_tuples(decoder):
    frames = pages_frames()
    msg = decoder.decode(tuple(memoryview(f) for f in frames))
    assert msg.page_numbers.tolist() == [5, 6, 7, 100]


def test_decode_accepts_unaligned_page_frame(decoder):
    frames = pages_frames()
    shifted = memoryview(b"\x00" + frames[1])[1:]
    msg = decoder.decode([frames[0], shifted, frames[2]])
    assert msg.page_numbers.tolist() == [5, 6, 7, 100]


# --------------------------------------------------------------------------
# Validation: one mutation of a valid message per rule


def test_valid_base_message_decodes(decoder):
    assert decoder.decode(pages_frames()).page_count == 4


@pytest.mark.parametrize("count", [0, 1, 2, 4, 5])
def test_frame_count(decoder, count):
    frames = (pages_frames() + [b""] * 3)[:count]
    expect_error(decoder, frames, "frames")


def test_frames_not_a_list(decoder):
    expect_error(decoder, b"abc", "frames")
    expect_error(decoder, None, "frames")


def test_frame_not_bytes_like(decoder):
    frames = pages_frames()
    expect_error(decoder, [123, frames[1], frames[2]], "header")
    expect_error(decoder, [frames[0], "text", frames[2]], "page_numbers")
    expect_error(decoder, [frames[0], frames[1], object()], "payload")


def test_non_contiguous_frame(decoder):
    frames = pages_frames()
    strided = np.frombuffer(frames[1] * 2, dtype="<u4")[::2]
    expect_error(decoder, [frames[0], strided, frames[2]], "page_numbers")


@pytest.mark.parametrize("size", [0, 1, HEADER_SIZE - 1, HEADER_SIZE + 1])
def test_header_length(decoder, size):
    frames = pages_frames()
    header = (frames[0] + b"\x00")[:size]
    err = expect_error(decoder, [header, frames[1], frames[2]], "header")
    assert f"got {size} bytes, expected {HEADER_SIZE}" in str(err)


def test_bad_magic(decoder):
    err = expect_error(decoder, with_header(pages_frames(), magic=b"PCPZ"), "magic")
    assert "b'PCPZ'" in str(err) and "b'PCPY'" in str(err)


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5, 7, 0xFFFF])
def test_bad_version(decoder, version):
    err = expect_error(decoder, with_header(pages_frames(), version=version), "version")
    assert f"got {version}, expected 6" in str(err)


@pytest.mark.parametrize("type_id", [0, 23, 255])
def test_unknown_type(decoder, type_id):
    expect_error(decoder, with_header(pages_frames(), type=type_id), "type")


@pytest.mark.parametrize("bits", [8, 16, 0x80, 0xFF])
def test_unknown_flag_bits(decoder, bits):
    expect_error(decoder, with_header(pages_frames(), flags=bits), "flags")


@pytest.mark.parametrize("codec", [3, 255])
def test_unknown_codec(decoder, codec):
    expect_error(decoder, with_header(pages_frames(), codec=codec), "codec")


@pytest.mark.parametrize("pad", [b"\x01\x00\x00", b"\x00\x00\x80"])
def test_nonzero_pad(decoder, pad):
    expect_error(decoder, with_header(pages_frames(), pad=pad), "pad")


def test_page_count_zero(decoder):
    frames = with_header(pages_frames(), page_count=0, raw_len=0, encoded_len=0)
    expect_error(decoder, [frames[0], b"", b""], "page_count")


def test_page_count_above_n_pages(decoder):
    frames = encode_zero_pages(0, 0, [[0, N_PAGES]], PAGE_SIZE, Flags.RUNS)
    frames = with_header(frames, page_count=N_PAGES + 1, raw_len=(N_PAGES + 1) * PAGE_SIZE)
    expect_error(decoder, frames, "page_count")


def test_page_frame_shorter_than_page_count(decoder):
    frames = pages_frames()
    err = expect_error(decoder, [frames[0], frames[1][:-4], frames[2]], "page_numbers")
    assert "expected 4 * page_count = 16" in str(err)


def test_page_frame_not_multiple_of_four(decoder):
    frames = pages_frames()
    expect_error(decoder, [frames[0], frames[1] + b"\x00", frames[2]], "page_numbers")


def test_page_number_equal_to_n_pages(decoder):
    frames = encode_pages(0, 0, [1, N_PAGES], raw_batch(2), Codec.RAW, 2 * PAGE_SIZE)
    err = expect_error(decoder, frames, "page_numbers")
    assert f"got page {N_PAGES}, expected < n_pages {N_PAGES}" in str(err)


def test_page_number_last_valid(decoder):
    frames = encode_pages(0, 0, [N_PAGES - 1], raw_batch(1), Codec.RAW, PAGE_SIZE)
    assert decoder.decode(frames).page_numbers.tolist() == [N_PAGES - 1]


def test_page_number_u32_max(decoder):
    frames = encode_pages(0, 0, [2**32 - 1], raw_batch(1), Codec.RAW, PAGE_SIZE)
    expect_error(decoder, frames, "page_numbers")


def test_run_past_end(decoder):
    frames = encode_zero_pages(0, 0, [[N_PAGES - 2, 3]], PAGE_SIZE, Flags.RUNS)
    err = expect_error(decoder, frames, "page_numbers")
    assert f"run ends at page {N_PAGES + 1}" in str(err)


def test_run_ending_exactly_at_n_pages(decoder):
    frames = encode_zero_pages(0, 0, [[N_PAGES - 2, 2]], PAGE_SIZE, Flags.RUNS)
    assert decoder.decode(frames).page_numbers.tolist() == [N_PAGES - 2, N_PAGES - 1]


def test_run_start_plus_count_overflowing_u32(decoder):
    runs = np.array([[2**32 - 1, 2]], dtype="<u4").tobytes()
    frames = encode_zero_pages(0, 0, [[0, 2]], PAGE_SIZE, Flags.RUNS)
    expect_error(decoder, [frames[0], runs, frames[2]], "page_numbers")


def test_run_with_zero_count(decoder):
    frames = encode_zero_pages(0, 0, [[0, 2]], PAGE_SIZE, Flags.RUNS)
    bad = np.array([[0, 2], [5, 0]], dtype="<u4").tobytes()
    expect_error(decoder, [frames[0], bad, frames[2]], "page_numbers")


def test_runs_not_summing_to_page_count(decoder):
    frames = encode_zero_pages(0, 0, [[0, 2], [10, 2]], PAGE_SIZE, Flags.RUNS)
    frames = with_header(frames, page_count=5, raw_len=5 * PAGE_SIZE)
    err = expect_error(decoder, frames, "page_numbers")
    assert "runs cover 4 pages, expected page_count 5" in str(err)


@pytest.mark.parametrize("frame", [b"", b"\x00" * 4, b"\x00" * 12])
def test_runs_frame_length(decoder, frame):
    frames = encode_zero_pages(0, 0, [[0, 2]], PAGE_SIZE, Flags.RUNS)
    expect_error(decoder, [frames[0], frame, frames[2]], "page_numbers")


def test_more_runs_than_pages(decoder):
    frames = encode_zero_pages(0, 0, [[0, 2]], PAGE_SIZE, Flags.RUNS)
    three_runs = np.array([[0, 1], [5, 1], [9, 0]], dtype="<u4").tobytes()
    expect_error(decoder, [frames[0], three_runs, frames[2]], "page_numbers")


def test_raw_len_not_page_count_times_page_size(decoder):
    frames = with_header(pages_frames(), raw_len=4 * PAGE_SIZE - 1)
    err = expect_error(decoder, frames, "raw_len")
    assert f"expected page_count*page_size = 4*{PAGE_SIZE} = {4 * PAGE_SIZE}" in str(err)


def test_zero_pages_raw_len_mismatch(decoder):
    frames = with_header(encode_zero_pages(0, 0, [1, 2], PAGE_SIZE), raw_len=PAGE_SIZE)
    expect_error(decoder, frames, "raw_len")


def test_huge_raw_len_claimed_with_tiny_payload_allocates_nothing():
    # A 4 TiB guest, so 1 TiB of pages is a consistent page_count: only the
    # max_payload_bytes limit stands between the claim and an allocation.
    decoder = Decoder(PAGE_SIZE, 2**30, MAX_PAYLOAD)
    runs = np.array([[0, 2**28]], dtype="<u4").tobytes()
    frames = [
        HEADER.pack(MAGIC, VERSION, MsgType.PAGES, Flags.RUNS, 0, 0, 2**28, Codec.LZ4, b"\0\0\0", 2**40, 10),
        runs,
        b"x" * 10,
    ]
    tracemalloc.start()
    try:
        err = expect_error(decoder, frames, "raw_len")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"got {2**40}, expected <= max_payload_bytes {MAX_PAYLOAD}" in str(err)
    assert peak < 256 * 1024


def test_huge_raw_len_inconsistent_with_page_count(decoder):
    expect_error(decoder, with_header(pages_frames(), raw_len=2**40), "raw_len")


def test_encoded_len_above_max_payload():
    decoder = Decoder(PAGE_SIZE, N_PAGES, 2 * PAGE_SIZE)
    frames = encode_pages(0, 0, [1, 2], b"x" * 10, Codec.LZ4, 2 * PAGE_SIZE)
    expect_error(decoder, with_header(frames, encoded_len=2 * PAGE_SIZE + 1), "encoded_len")


def test_pages_above_max_payload_refused():
    decoder = Decoder(PAGE_SIZE, N_PAGES, 3 * PAGE_SIZE)
    expect_error(decoder, pages_frames(), "raw_len")


def test_raw_codec_encoded_len_differs_from_raw_len(decoder):
    frames = pages_frames()
    frames = with_header(frames, encoded_len=4 * PAGE_SIZE - 1)
    expect_error(decoder, [frames[0], frames[1], frames[2][:-1]], "encoded_len")


def test_lz4_encoded_len_not_smaller_than_raw_len(decoder):
    frames = with_header(pages_frames(), codec=Codec.LZ4)
    err = expect_error(decoder, frames, "encoded_len")
    assert "expected 0 < encoded_len < raw_len" in str(err)


def test_lz4_empty_payload(decoder):
    frames = with_header(pages_frames(), codec=Codec.LZ4, encoded_len=0)
    expect_error(decoder, [frames[0], frames[1], b""], "encoded_len")


def test_payload_shorter_than_encoded_len(decoder):
    frames = pages_frames()
    err = expect_error(decoder, [frames[0], frames[1], frames[2][:-1]], "payload")
    assert f"got {4 * PAGE_SIZE - 1} bytes, expected encoded_len {4 * PAGE_SIZE}" in str(err)


def test_payload_longer_than_encoded_len(decoder):
    frames = encode_pages(0, 0, [1, 2], b"x" * 10, Codec.LZ4, 2 * PAGE_SIZE)
    expect_error(decoder, [frames[0], frames[1], frames[2] + b"y"], "payload")


def test_raw_fallback_with_lz4_codec(decoder):
    frames = encode_pages(0, 0, [1, 2], b"x" * 10, Codec.LZ4, 2 * PAGE_SIZE)
    expect_error(decoder, with_header(frames, flags=Flags.RAW_FALLBACK), "flags")


def test_zero_pages_with_payload(decoder):
    frames = encode_zero_pages(0, 0, [1], PAGE_SIZE)
    expect_error(decoder, [frames[0], frames[1], b"\x00"], "payload")
    expect_error(decoder, with_header(frames, encoded_len=1), "encoded_len")


def test_zero_pages_with_lz4_codec(decoder):
    frames = encode_zero_pages(0, 0, [1], PAGE_SIZE)
    expect_error(decoder, with_header(frames, codec=Codec.LZ4), "codec")


def test_zero_pages_with_raw_fallback(decoder):
    frames = encode_zero_pages(0, 0, [1], PAGE_SIZE)
    expect_error(decoder, with_header(frames, flags=Flags.RAW_FALLBACK), "flags")


def test_page_messages_refused_before_negotiation():
    for frames in (pages_frames(), encode_zero_pages(0, 0, [1], PAGE_SIZE), encode_device_state(0, 0, b"s")):
        err = expect_error(Decoder(), frames, "type")
        assert "before negotiation" in str(err)


def test_device_state_above_max_payload():
    decoder = Decoder(PAGE_SIZE, N_PAGES, 100)
    expect_error(decoder, encode_device_state(0, 0, b"s" * 101), "encoded_len")
    assert decoder.decode(encode_device_state(0, 0, b"s" * 100)).encoded_len == 100


def test_device_state_raw_len_mismatch(decoder):
    frames = with_header(encode_device_state(0, 0, b"abc"), raw_len=4)
    expect_error(decoder, frames, "raw_len")


def test_device_state_with_page_frame(decoder):
    frames = encode_device_state(0, 0, b"abc")
    expect_error(decoder, [frames[0], b"\x01\x00\x00\x00", frames[2]], "page_numbers")


def test_device_state_with_flags(decoder):
    expect_error(decoder, with_header(encode_device_state(0, 0, b"abc"), flags=Flags.RUNS), "flags")


def control_frames(body: bytes) -> list:
    return with_header(encode_control(MsgType.ABORT, 0, 0, {}), raw_len=len(body), encoded_len=len(body))[:2] + [body]


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"{'a': 1}", b'{"a": NaN}', b'{"a": Infinity}', b"[" * 50000 + b"]" * 50000, b'{"a":1} x'],
)
def test_control_invalid_json(body):
    frames = control_frames(body)
    if len(body) > MAX_CONTROL_BYTES:
        expect_error(Decoder(), frames, "encoded_len")
    else:
        err = expect_error(Decoder(), frames, "payload")
        assert "not valid JSON" in str(err)


def test_control_deeply_nested_json_is_a_protocol_error():
    body = b"[" * 30000 + b"]" * 30000
    err = expect_error(Decoder(), control_frames(body), "payload")
    assert "not valid JSON" in str(err)


@pytest.mark.parametrize("body", [b"[]", b'[{"reason": "x"}]', b'"text"', b"3", b"null", b"true"])
def test_control_json_not_an_object(body):
    err = expect_error(Decoder(), control_frames(body), "payload")
    assert "expected an object" in str(err)


def test_control_invalid_utf8():
    err = expect_error(Decoder(), control_frames(b'{"reason": "\xff"}'), "payload")
    assert "not UTF-8" in str(err)


@pytest.mark.parametrize("body", [b'{"reason": "\\ud800"}', b'{"\\udfff": 1}', b'{"a": ["x", {"b": "\\udbff"}]}'])
def test_control_json_with_a_lone_surrogate_is_refused(body):
    err = expect_error(Decoder(), control_frames(body), "payload")
    assert "lone surrogate" in str(err)


def test_control_json_with_escapes_that_are_text_is_taken():
    message = Decoder().decode(control_frames(b'{"reason": "\\u00e9\\ud83d\\ude00"}'))
    assert message.body["reason"] == "\u00e9\U0001f600"


def test_a_body_that_is_not_text_cannot_be_sent():
    with pytest.raises(LocalProtocolError, match="not UTF-8 text"):
        encode_control(MsgType.ABORT, 0, 0, {"reason": "\ud800"})


def test_control_payload_too_large():
    body = b'{"a":"' + b"x" * MAX_CONTROL_BYTES + b'"}'
    expect_error(Decoder(), control_frames(body), "encoded_len")


def test_control_raw_len_mismatch():
    frames = with_header(encode_control(MsgType.HELLO, 0, 0, {}), raw_len=3)
    expect_error(Decoder(), frames, "raw_len")


def test_control_encoded_len_mismatch():
    frames = with_header(encode_control(MsgType.HELLO, 0, 0, {}), raw_len=3, encoded_len=3)
    expect_error(Decoder(), frames, "payload")


def test_control_with_page_frame():
    frames = encode_control(MsgType.PASS_END, 0, 0, {"pages": 1})
    expect_error(Decoder(), [frames[0], b"\x00" * 4, frames[2]], "page_numbers")


def test_control_with_page_count():
    frames = with_header(encode_control(MsgType.PASS_END, 0, 0, {"pages": 1}), page_count=1)
    expect_error(Decoder(), frames, "page_count")


def test_control_with_flags():
    frames = with_header(encode_control(MsgType.HEARTBEAT, 0, 0, {}), flags=Flags.RUNS)
    expect_error(Decoder(), frames, "flags")


def test_control_with_lz4_codec():
    frames = with_header(encode_control(MsgType.HEARTBEAT, 0, 0, {}), codec=Codec.LZ4)
    expect_error(Decoder(), frames, "codec")


def test_errors_form_one_hierarchy():
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(ProtocolError, Exception)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)


# --------------------------------------------------------------------------
# Encoding refuses what the decoder would refuse


@pytest.mark.parametrize(
    ("pages", "field"),
    [
        ([], "page_numbers"),
        (np.array([-1, 2]), "page_numbers"),
        (np.array([2**32]), "page_numbers"),
        (np.array([1.0, 2.0]), "page_numbers"),
        (np.array([True]), "page_numbers"),
    ],
)
def test_encode_pages_bad_page_numbers(pages, field):
    with pytest.raises(LocalProtocolError) as info:
        encode_pages(0, 0, pages, b"x" * PAGE_SIZE, Codec.RAW, PAGE_SIZE)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seq": -1}, "seq"),
        ({"seq": 2**64}, "seq"),
        ({"pass_no": 2**32}, "pass_no"),
        ({"pass_no": 1.5}, "pass_no"),
        ({"raw_len": PAGE_SIZE + 1}, "raw_len"),
        ({"raw_len": -1}, "raw_len"),
        ({"flags": 8}, "flags"),
        ({"flags": Flags.RAW_FALLBACK, "codec": Codec.LZ4, "payload": b"x", "raw_len": PAGE_SIZE}, "flags"),
        ({"codec": 7}, "codec"),
        ({"codec": Codec.LZ4}, "payload"),  # not smaller than raw
        ({"payload": 42}, "payload"),
    ],
)
def test_encode_pages_bad_arguments(kwargs, field):
    args = {
        "seq": 0, "pass_no": 0, "page_numbers": [3], "payload": b"x" * PAGE_SIZE,
        "codec": Codec.RAW, "raw_len": PAGE_SIZE,
    }  # fmt: skip
    args.update(kwargs)
    with pytest.raises(LocalProtocolError) as info:
        encode_pages(**args)
    assert info.value.field == field


def test_encode_pages_raw_len_not_multiple_of_page_count():
    with pytest.raises(LocalProtocolError) as info:
        encode_pages(0, 0, [1, 2], b"x" * 10, Codec.LZ4, 2 * PAGE_SIZE + 1)
    assert info.value.field == "raw_len"


@pytest.mark.parametrize("runs", [[[1, 0]], [1, 2, 3], [[2**32 - 1, 2]]])
def test_encode_bad_runs(runs):
    with pytest.raises(LocalProtocolError) as info:
        encode_zero_pages(0, 0, runs, PAGE_SIZE, Flags.RUNS)
    assert info.value.field == "page_numbers"


def test_encode_zero_pages_refuses_raw_fallback():
    with pytest.raises(LocalProtocolError) as info:
        encode_zero_pages(0, 0, [1], PAGE_SIZE, Flags.RAW_FALLBACK)
    assert info.value.field == "flags"


def test_encode_page_numbers_frame_is_a_snapshot():
    pages = np.array([1, 2, 3], dtype="<u4")
    frames = encode_zero_pages(0, 0, pages, PAGE_SIZE)
    pages[:] = 7  # the caller reuses its array before ZeroMQ has sent
    assert np.frombuffer(frames[1], "<u4").tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("msg_type", "body", "field"),
    [
        (MsgType.PAGES, {}, "type"),
        (MsgType.DEVICE_STATE, {}, "type"),
        (99, {}, "type"),
        (MsgType.ABORT, ["reason"], "body"),
        (MsgType.ABORT, {"x": object()}, "body"),
        (MsgType.ABORT, {"x": float("nan")}, "body"),
        (MsgType.ABORT, {"x": "y" * MAX_CONTROL_BYTES}, "body"),
    ],
)
def test_encode_control_bad_arguments(msg_type, body, field):
    with pytest.raises(LocalProtocolError) as info:
        encode_control(msg_type, 0, 0, body)
    assert info.value.field == field


# --------------------------------------------------------------------------
# Helpers


def test_pages_to_runs_and_back():
    pages = np.array([4, 5, 6, 9, 3, 4, 100], dtype=np.int64)
    runs = pages_to_runs(pages)
    assert runs.dtype == np.dtype("<u4")
    assert runs.tolist() == [[4, 3], [9, 1], [3, 2], [100, 1]]
    assert expand_runs(runs).tolist() == pages.tolist()
    assert expand_runs(runs.reshape(-1)).tolist() == pages.tolist()
    assert pages_to_runs([]).shape == (0, 2)
    assert expand_runs(np.empty((0, 2), "<u4")).size == 0


def test_runs_round_trip_random():
    rng = np.random.default_rng(7)
    pages = np.flatnonzero(rng.random(100_000) < 0.3)
    assert np.array_equal(expand_runs(pages_to_runs(pages)), pages)


def test_expect_seq(decoder):
    msg = decoder.decode(pages_frames())  # seq 9
    assert expect_seq(msg, 9) == 10
    with pytest.raises(RemoteProtocolError) as info:
        expect_seq(msg, 8)
    assert info.value.field == "seq"
    assert "got 9, expected 8" in str(info.value)
    last = Decoder().decode(encode_control(MsgType.HEARTBEAT, 2**64 - 1, 0, {}))
    assert expect_seq(last, 2**64 - 1) == 0


def test_message_field():
    msg = Decoder().decode(encode_control(MsgType.HELLO, 0, 0, {"page_size": 4096, "flag": True, "s": "x"}))
    assert msg.field("page_size", int) == 4096
    assert msg.field("flag", bool) is True
    for name, kind in (("missing", int), ("flag", int), ("s", int), ("page_size", str)):
        with pytest.raises(RemoteProtocolError) as info:
            msg.field(name, kind)
        assert info.value.field == f"body.{name}"


def test_message_is_frozen(decoder):
    msg = decoder.decode(pages_frames())
    with pytest.raises(AttributeError):
        msg.seq = 3


@pytest.mark.parametrize(
    "args",
    [(4096, None, None), (None, 10, 10), (0, 10, 10), (4096, 0, 10), (4096, 10, -1), (4096.0, 10, 10), (True, 1, 1)],
)
def test_decoder_limits_all_or_none_and_positive(args):
    with pytest.raises(ValueError):
        Decoder(*args)


def test_decoder_properties():
    assert Decoder().negotiated is False
    d = Decoder(PAGE_SIZE, N_PAGES, MAX_PAYLOAD)
    assert d.negotiated is True
    assert (d.page_size, d.n_pages, d.max_payload_bytes) == (PAGE_SIZE, N_PAGES, MAX_PAYLOAD)


# --------------------------------------------------------------------------
# Fuzzing: whatever arrives, decode returns a Message or raises RemoteProtocolError

# database=None: leave no .hypothesis directory in the tree.
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_DECODERS = (Decoder(), Decoder(PAGE_SIZE, N_PAGES, MAX_PAYLOAD))


def valid_messages() -> list[list]:
    small = raw_batch(2, seed=3)
    return [
        pages_frames(),
        encode_pages(1, 1, [[3, 2]], small, Codec.RAW, 2 * PAGE_SIZE, Flags.RUNS),
        encode_pages(1, 1, [8, 9], b"\x00" * 40, Codec.LZ4, 2 * PAGE_SIZE),
        encode_zero_pages(2, 1, [[0, 3], [10, 1]], PAGE_SIZE, Flags.RUNS),
        encode_zero_pages(2, 1, [4, 1000], PAGE_SIZE),
        encode_device_state(3, 1, b"state" * 10),
        encode_control(MsgType.HELLO, 0, 0, {"page_size": 4096, "codec": "lz4"}),
        encode_control(MsgType.HEARTBEAT, 5, 0, {}),
    ]


VALID = valid_messages()


def decode_or_protocol_error(frames) -> None:
    for decoder in FUZZ_DECODERS:
        try:
            msg = decoder.decode(frames)
        except RemoteProtocolError as exc:
            assert isinstance(exc.field, str) and exc.field
            continue
        # Whatever was accepted is internally consistent.
        assert msg.page_numbers.size == msg.page_count
        assert len(msg.payload) == msg.encoded_len
        if msg.page_count:
            assert int(msg.page_numbers.max()) < decoder.n_pages


@FUZZ
@given(st.lists(st.binary(max_size=80), max_size=5))
def test_fuzz_random_frames(frames):
    decode_or_protocol_error(frames)


@FUZZ
@given(
    index=st.integers(0, len(VALID) - 1),
    frame=st.integers(0, 2),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 200)),
    extra=st.binary(max_size=16),
)
def test_fuzz_mutated_valid_frames(index, frame, edits, cut, extra):
    frames = [bytearray(f) for f in VALID[index]]
    target = frames[frame]
    for position, value in edits:
        if target:
            target[position % len(target)] = value
    if cut is not None:
        del target[cut:]
    target += extra
    decode_or_protocol_error(frames)


@FUZZ
@given(
    type_id=st.integers(0, 14),
    flags=st.integers(0, 4),
    page_count=st.sampled_from([0, 1, 2, 3, N_PAGES, N_PAGES + 1, 2**32 - 1]),
    codec=st.integers(0, 2),
    raw_len=st.sampled_from([0, 2, 16, PAGE_SIZE, 2 * PAGE_SIZE, MAX_PAYLOAD + 1, 2**64 - 1]),
    encoded_len=st.sampled_from([0, 2, 16, PAGE_SIZE, 2**63]),
    pages=st.binary(max_size=24),
    payload=st.sampled_from([b"", b"{}", b"[]", b"\x00" * 16, b"x" * PAGE_SIZE]),
)
def test_fuzz_structured_headers(type_id, flags, page_count, codec, raw_len, encoded_len, pages, payload):
    header = HEADER.pack(MAGIC, VERSION, type_id, flags, 0, 0, page_count, codec, b"\0\0\0", raw_len, encoded_len)
    decode_or_protocol_error([header, pages, payload])


# --------------------------------------------------------------------------
# Page lists (MISSING, PAGE_REQUEST): post-copy's sets of pages


@pytest.mark.parametrize("msg_type", [MsgType.MISSING, MsgType.PAGE_REQUEST])
@pytest.mark.parametrize("pages, runs", [([7], False), ([1, 5, 9], False), (list(range(10, 20)) + [40], True),
                                         (list(range(N_PAGES)), True)])
def test_a_page_list_round_trips_as_runs_when_shorter(decoder, msg_type, pages, runs):
    message = decoder.decode(encode_page_list(msg_type, 3, 2, np.array(pages)))
    assert message.type == msg_type and message.page_count == len(pages) and message.pass_no == 2
    assert bool(message.flags & Flags.RUNS) == runs and message.page_numbers.tolist() == pages
    assert (message.codec, message.raw_len, message.encoded_len, message.payload.nbytes) == (Codec.RAW, 0, 0, 0)


def test_missing_may_be_empty_and_a_request_may_not(decoder):
    message = decoder.decode(encode_page_list(MsgType.MISSING, 0, 1, np.array([], dtype=np.int64)))
    assert message.page_count == 0 and message.page_numbers.size == 0
    with pytest.raises(LocalProtocolError, match="at least one"):
        encode_page_list(MsgType.PAGE_REQUEST, 0, 1, [])
    empty_request = with_header(encode_page_list(MsgType.MISSING, 0, 1, []), type=int(MsgType.PAGE_REQUEST))
    expect_error(decoder, empty_request, "page_count")


@pytest.mark.parametrize("pages", [[5, 5], [9, 3]])
def test_a_page_list_out_of_order_is_refused_both_ways(decoder, pages):
    with pytest.raises(LocalProtocolError, match="ascending and distinct"):
        encode_page_list(MsgType.PAGE_REQUEST, 0, 1, pages)
    header = with_header(encode_page_list(MsgType.PAGE_REQUEST, 0, 1, [1]), page_count=2)
    expect_error(decoder, [header[0], np.array(pages, dtype="<u4").tobytes(), b""], "page_numbers")


def test_overlapping_runs_in_a_page_list_are_refused(decoder):
    frames = encode_page_list(MsgType.MISSING, 0, 1, list(range(10, 20)))
    runs = np.array([[10, 6], [14, 4]], dtype="<u4")  # 10..15 and 14..17: page 14 twice
    expect_error(decoder, [with_header(frames, page_count=10)[0], runs.tobytes(), b""], "page_numbers")


@pytest.mark.parametrize("change, field", [
    ({"codec": int(Codec.LZ4)}, "codec"), ({"raw_len": PAGE_SIZE}, "raw_len"), ({"encoded_len": 4}, "encoded_len"),
    ({"flags": int(Flags.DISK)}, "flags"), ({"flags": int(Flags.RAW_FALLBACK)}, "flags"),
    ({"page_count": N_PAGES + 1}, "page_count"),
])
def test_a_page_list_with_a_bad_header_is_refused_naming_the_field(decoder, change, field):
    expect_error(decoder, with_header(encode_page_list(MsgType.PAGE_REQUEST, 0, 1, [3, 4]), **change), field)


def test_a_page_list_with_a_payload_or_a_page_past_memory_is_refused(decoder):
    frames = encode_page_list(MsgType.MISSING, 0, 1, [3])
    expect_error(decoder, [frames[0], frames[1], b"x"], "payload")
    expect_error(decoder, [frames[0], np.array([N_PAGES], dtype="<u4").tobytes(), b""], "page_numbers")
    expect_error(Decoder(), frames, "type")  # before negotiation: no pages to name
