"""XBZRLE: the delta kernels against a plain reference, the cache, and hostile deltas refused."""

import struct

import numpy as np
import pytest

from kernels import pages as page_ops
from kernels import xbzrle
from tests import reference

PAGE = 4096


def page_pair(change):
    """(old, new) random pages, `new` changed by change(new) (a function of a bytearray)."""
    old = np.random.default_rng(3).integers(0, 256, PAGE, dtype=np.uint8).tobytes()
    new = bytearray(old)
    change(new)
    return old, bytes(new)


def _bump(indices):
    def change(page):
        for i in indices:
            page[i] = (page[i] + 1) % 256
    return change


EDGES = {
    "no change": _bump([]),
    "first byte": _bump([0]),
    "last byte": _bump([PAGE - 1]),
    "a run at the page's end": _bump(range(PAGE - 100, PAGE)),
    "a run at the page's start": _bump(range(0, 300)),
    "runs at both ends": _bump([*range(0, 8), *range(PAGE - 8, PAGE)]),
    "a zero run of 200 bytes (a 2-byte ULEB128)": _bump([0, 201]),
    "a 130-byte changed run (a 2-byte count)": _bump(range(1000, 1130)),
    "scattered bytes": _bump(range(0, PAGE, 97)),
    "half the page": _bump(range(0, PAGE, 2)),
    "every byte": _bump(range(PAGE)),
}


def encode_one(old, new, slots=4):
    """The kernel's encoding of page 1 = `new` against a cache holding `old` for page 1: (deltas, payload, others)."""
    cache = xbzrle.Cache(slots * PAGE, PAGE)
    memory = np.zeros(2 * PAGE, dtype=np.uint8)
    memory[PAGE:] = np.frombuffer(old, dtype=np.uint8)
    cache.remember(np.array([1]), memory[PAGE:].copy())
    memory[PAGE:] = np.frombuffer(new, dtype=np.uint8)
    return cache, memory, cache.encode(memory, np.array([1]))


@pytest.mark.parametrize("case", list(EDGES))
def test_the_kernel_encodes_as_the_reference_and_the_destination_gets_the_new_page(case):
    old, new = page_pair(EDGES[case])
    expected = reference.xbzrle_encode(old, new)
    cache, memory, (deltas, payload, others) = encode_one(old, new)
    if len(expected) + xbzrle.LENGTH_BYTES >= PAGE:  # no smaller than the page: sent whole instead
        assert deltas.tolist() == [] and others.tolist() == [1] and cache.overflows == 1
        return
    assert deltas.tolist() == [1] and others.tolist() == []
    assert bytes(payload) == struct.pack("<I", len(expected)) + expected
    assert reference.xbzrle_decode(expected, old) == new
    destination = np.zeros(2 * PAGE, dtype=np.uint8)
    destination[PAGE:] = np.frombuffer(old, dtype=np.uint8)
    table = page_ops.page_digests(destination, PAGE)
    bad, total, xor = xbzrle.apply_batch(destination, PAGE, deltas, payload, table)
    assert bad == -1 and bytes(destination[PAGE:]) == new and bytes(destination[:PAGE]) == bytes(PAGE)
    assert table.tolist() == page_ops.page_digests(destination, PAGE).tolist()  # the digest entry replaced
    assert bytes(cache.data[PAGE:2 * PAGE]) == new  # page 1's slot: the cache holds what the destination holds


def test_an_unchanged_page_is_a_zero_length_delta():
    old, new = page_pair(EDGES["no change"])
    _, _, (deltas, payload, others) = encode_one(old, new)
    assert deltas.tolist() == [1] and bytes(payload) == bytes(4)


def test_the_cache_counts_misses_overflows_and_evictions():
    cache = xbzrle.Cache(2 * PAGE, PAGE)  # two slots: pages 0 and 2 share slot 0
    memory = np.random.default_rng(5).integers(0, 256, 4 * PAGE, dtype=np.uint8)
    deltas, _, others = cache.encode(memory, np.arange(4))
    assert (deltas.tolist(), others.tolist(), cache.misses) == ([], [0, 1, 2, 3], 4)
    cache.remember(np.array([0, 1]), memory[: 2 * PAGE].copy())
    cache.remember(np.array([2]), memory[2 * PAGE : 3 * PAGE].copy())  # evicts page 0
    deltas, _, others = cache.encode(memory, np.arange(4))
    assert (deltas.tolist(), others.tolist(), cache.misses) == ([1, 2], [0, 3], 6)
    cache.forget(np.array([1]))  # page 1 went as a zero page
    deltas, _, others = cache.encode(memory, np.array([1, 2]))
    assert (deltas.tolist(), others.tolist()) == ([2], [1])
    assert (cache.looked_up, cache.delta_pages, cache.overflows) == (10, 3, 0)


def hostile(encoding):
    return struct.pack("<I", len(encoding)) + encoding


HOSTILE = {
    "a changed run past the page's end": hostile(reference.uleb128(PAGE - 2) + reference.uleb128(5) + bytes(5)),
    "an unchanged run past the page's end": hostile(reference.uleb128(PAGE + 10) + reference.uleb128(1) + b"x"),
    "a count larger than the bytes that follow": hostile(reference.uleb128(0) + reference.uleb128(100) + bytes(10)),
    "a changed run of 0": hostile(reference.uleb128(5) + reference.uleb128(0)),
    "an unchanged run and nothing after it": hostile(reference.uleb128(5)),
    "a ULEB128 that never ends": hostile(b"\xff" * 8),
    "a ULEB128 cut short": hostile(b"\x80"),
    "a length past the payload": struct.pack("<I", 1000) + bytes(10),
    "a length cut short": b"\x01\x00",
    "bytes after the last page": hostile(reference.uleb128(0) + reference.uleb128(1) + b"x") + b"extra",
    "a huge count (2**34)": hostile(reference.uleb128(0) + reference.uleb128(1 << 34) + b"x"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_delta_is_refused_and_writes_nothing_outside_its_page(case):
    memory = np.full(3 * PAGE, 0xAB, dtype=np.uint8)
    before = memory.copy()
    bad, _, _ = xbzrle.apply_batch(memory, PAGE, np.array([1]), HOSTILE[case])
    assert bad in (0, 1)  # the first page is malformed, or the bytes after it are
    assert np.array_equal(memory[:PAGE], before[:PAGE]) and np.array_equal(memory[2 * PAGE :], before[2 * PAGE :])
    if case not in ("bytes after the last page", "a length cut short", "a length past the payload"):  # framing
        with pytest.raises(ValueError):
            reference.xbzrle_decode(HOSTILE[case][4:], bytes(PAGE))


def test_random_pages_round_trip_through_the_batch_kernels():
    rng = np.random.default_rng(11)
    n = 64
    memory = rng.integers(0, 256, n * PAGE, dtype=np.uint8)
    destination = memory.copy()
    cache = xbzrle.Cache(n * PAGE, PAGE)
    cache.remember(np.arange(n), memory.copy())
    for _ in range(5):
        for page in rng.choice(n, 20, replace=False):  # small writes into some pages
            offset = page * PAGE + int(rng.integers(0, PAGE - 64))
            memory[offset : offset + int(rng.integers(1, 64))] = rng.integers(0, 256, dtype=np.uint8)
        deltas, payload, others = cache.encode(memory, np.arange(n))
        assert others.size == 0 and xbzrle.apply_batch(destination, PAGE, deltas, payload)[0] == -1
        assert np.array_equal(destination, memory) and np.array_equal(cache.data, memory)


def test_a_hostile_xbzrle_frame_is_a_protocol_error_naming_the_field():
    from emulator.dataplane.batches import BatchApplier
    from emulator.dataplane.digest import RunningDigest
    from emulator.vm.guest import GuestMemory, GuestSpec
    from emulator.wire import protocol

    decoder = protocol.Decoder(PAGE, 4, 4 * PAGE)
    delta = hostile(reference.uleb128(PAGE - 2) + reference.uleb128(5) + bytes(5))
    first_pass = protocol.encode_pages(0, 0, [1], delta, protocol.Codec.XBZRLE, PAGE)
    with pytest.raises(protocol.RemoteProtocolError) as error:
        decoder.decode(first_pass)
    assert error.value.field == "codec" and "pass 0" in str(error.value)
    guest = GuestMemory(GuestSpec(4 * PAGE, fill="random"))
    before = guest.data.copy()
    applier = BatchApplier(guest, RunningDigest(4, PAGE))
    message = decoder.decode(protocol.encode_pages(0, 1, [1], delta, protocol.Codec.XBZRLE, PAGE))
    with pytest.raises(protocol.RemoteProtocolError) as error:
        applier.apply(message)
    assert error.value.field == "payload" and "page 1" in str(error.value)
    assert np.array_equal(guest.data[:PAGE], before[:PAGE]) and np.array_equal(guest.data[2 * PAGE:], before[2 * PAGE:])
