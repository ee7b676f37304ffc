"""Tests of emulator.dataplane.codecs: round trips, fallback, corruption, size checks."""

from __future__ import annotations

import threading

import lz4.block
import numpy as np
import pytest

from emulator.dataplane.codecs import CODEC_NAMES, codec_from_name, codec_name, decode_batch, encode_batch
from emulator.wire.protocol import Codec, Decoder, Flags, RemoteProtocolError, encode_pages

PAGE_SIZE = 4096


def compressible(n_pages: int) -> np.ndarray:
    """Pages that look like a lightly used guest: mostly zero, some patterns."""
    data = np.zeros(n_pages * PAGE_SIZE, dtype=np.uint8)
    data[:: 64] = np.arange(data[::64].size, dtype=np.uint8)
    return data


def incompressible(n_pages: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n_pages * PAGE_SIZE, dtype=np.uint8).tobytes()


def test_codec_names():
    assert dict(CODEC_NAMES) == {"raw": Codec.RAW, "lz4": Codec.LZ4}
    assert codec_from_name("raw") is Codec.RAW
    assert codec_from_name("lz4") is Codec.LZ4
    assert codec_name(Codec.LZ4) == "lz4" and codec_name(0) == "raw"
    for bad in ("LZ4", "zstd", "", None):
        with pytest.raises(ValueError, match="expected one of raw, lz4"):
            codec_from_name(bad)


def test_raw_is_passed_through():
    raw = compressible(4)
    codec, flags, payload = encode_batch(Codec.RAW, raw)
    assert (codec, flags) == (Codec.RAW, Flags.NONE)
    assert payload is raw
    assert decode_batch(Codec.RAW, payload, raw.nbytes) is payload


def test_lz4_round_trip_compressible():
    raw = compressible(16)
    codec, flags, payload = encode_batch(Codec.LZ4, raw)
    assert (codec, flags) == (Codec.LZ4, Flags.NONE)
    assert len(payload) < raw.nbytes // 10
    # store_size=False: a bare LZ4 block, no 4-byte size prefix.
    assert lz4.block.decompress(payload, uncompressed_size=raw.nbytes) == raw.tobytes()
    out = decode_batch(codec, payload, raw.nbytes)
    assert len(out) == raw.nbytes
    assert bytes(out) == raw.tobytes()


def test_lz4_round_trip_mixed_batch():
    raw = np.frombuffer(incompressible(2, seed=1) + compressible(6).tobytes(), dtype=np.uint8)
    codec, flags, payload = encode_batch(Codec.LZ4, raw)
    assert codec is Codec.LZ4 and flags == Flags.NONE
    assert bytes(decode_batch(codec, payload, raw.nbytes)) == raw.tobytes()


def test_lz4_random_data_falls_back_to_raw():
    raw = incompressible(8)
    codec, flags, payload = encode_batch(Codec.LZ4, raw)
    assert codec is Codec.RAW
    assert flags == Flags.RAW_FALLBACK
    assert payload is raw
    assert decode_batch(codec, payload, len(raw)) is raw


def test_fallback_goes_through_the_wire_format():
    raw = incompressible(2)
    codec, flags, payload = encode_batch(Codec.LZ4, raw)
    frames = encode_pages(0, 0, [1, 2], payload, codec, len(raw), flags)
    msg = Decoder(PAGE_SIZE, 16, 1 << 20).decode(frames)
    assert msg.flags == Flags.RAW_FALLBACK and msg.codec is Codec.RAW
    assert bytes(decode_batch(msg.codec, msg.payload, msg.raw_len)) == raw


def test_lz4_through_the_wire_format():
    raw = compressible(4)
    codec, flags, payload = encode_batch(Codec.LZ4, raw)
    msg = Decoder(PAGE_SIZE, 16, 1 << 20).decode(encode_pages(3, 1, [0, 1, 2, 3], payload, codec, raw.nbytes, flags))
    assert bytes(decode_batch(msg.codec, msg.payload, msg.raw_len)) == raw.tobytes()


def test_lz4_corrupted_payload():
    raw = compressible(4)
    _, _, payload = encode_batch(Codec.LZ4, raw)
    # First sequence: one literal "A", then a match at offset 0xFFFF, which
    # points before the start of the output.
    corrupt = b"\x10A\xff\xff" + payload[4:]
    with pytest.raises(RemoteProtocolError) as info:
        decode_batch(Codec.LZ4, corrupt, raw.nbytes)
    assert info.value.field == "payload"
    assert "corrupt LZ4 block" in str(info.value)


def test_lz4_truncated_payload():
    raw = compressible(4)
    _, _, payload = encode_batch(Codec.LZ4, raw)
    with pytest.raises(RemoteProtocolError) as info:
        decode_batch(Codec.LZ4, payload[: len(payload) // 2], raw.nbytes)
    assert info.value.field == "payload"


def test_lz4_garbage_payload_never_escapes():
    rng = np.random.default_rng(5)
    for _ in range(200):
        garbage = rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes()
        try:
            out = decode_batch(Codec.LZ4, garbage, PAGE_SIZE)
        except RemoteProtocolError as exc:
            assert exc.field == "payload"
        else:
            assert len(out) == PAGE_SIZE


def test_lz4_decoded_size_too_small_is_refused():
    raw = compressible(4)
    _, _, payload = encode_batch(Codec.LZ4, raw)
    # The block decodes to 4 pages; the header claims 5.
    with pytest.raises(RemoteProtocolError) as info:
        decode_batch(Codec.LZ4, payload, raw.nbytes + PAGE_SIZE)
    assert info.value.field == "payload"
    assert f"decoded to {raw.nbytes} bytes, expected raw_len {raw.nbytes + PAGE_SIZE}" in str(info.value)


def test_lz4_decoded_size_too_large_is_refused():
    raw = compressible(4)
    _, _, payload = encode_batch(Codec.LZ4, raw)
    with pytest.raises(RemoteProtocolError) as info:
        decode_batch(Codec.LZ4, payload, raw.nbytes - PAGE_SIZE)
    assert info.value.field == "payload"


def test_raw_size_mismatch_is_refused():
    with pytest.raises(RemoteProtocolError) as info:
        decode_batch(Codec.RAW, b"x" * 10, 11)
    assert info.value.field == "payload"


def test_unknown_codec_on_decode():
    with pytest.raises(RemoteProtocolError) as info:
        decode_batch(7, b"x", 1)
    assert info.value.field == "codec"


def test_unknown_codec_on_encode():
    with pytest.raises(ValueError):
        encode_batch(7, b"x")


def test_codecs_from_threads():
    batches = [compressible(8) + i for i in range(8)]  # distinct, compressible
    results = [None] * len(batches)

    def work(i: int) -> None:
        codec, _, payload = encode_batch(Codec.LZ4, batches[i])
        results[i] = bytes(decode_batch(codec, payload, batches[i].nbytes))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == batches[i].tobytes() for i in range(len(batches)))
