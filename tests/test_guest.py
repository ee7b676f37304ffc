import lz4.block
import numpy as np
import pytest

from emulator.vm.guest import GuestMemory, GuestSpec, page_kinds
from kernels import fill, pages

PAGE = 4096


def lz4_ratio(data):
    return data.size / len(lz4.block.compress(data.tobytes(), store_size=False))


@pytest.mark.parametrize("profile", ["zero", "random", "half", "text", "mixed"])
def test_profiles_are_reproducible_and_resident(profile):
    spec = GuestSpec(4 << 20, fill=profile, seed=3)
    first, second = GuestMemory(spec), GuestMemory(spec)
    assert first.n_pages == 1024 and first.data.size == 4 << 20
    assert first.digest() == second.digest()
    if profile != "zero":
        assert GuestMemory(GuestSpec(4 << 20, fill=profile, seed=4)).digest() != first.digest()


def test_profile_contents():
    n = 256
    zero = GuestMemory(GuestSpec(n * PAGE, fill="zero")).data
    assert not zero.any()
    random = GuestMemory(GuestSpec(n * PAGE, fill="random")).data
    assert lz4_ratio(random) < 1.01
    half = GuestMemory(GuestSpec(n * PAGE, fill="half")).data.reshape(n, PAGE)
    assert not half[:, PAGE // 2 :].any() and half[:, : PAGE // 2].all(axis=1).sum() < n  # random, not constant
    assert 1.9 < lz4_ratio(half.ravel()) < 2.1
    text = GuestMemory(GuestSpec(n * PAGE, fill="text")).data
    assert 1.5 < lz4_ratio(text) < 4
    assert set(np.unique(text).tolist()) <= set(range(ord("a"), ord("z") + 1)) | {ord(" ")}


def test_mixed_has_the_documented_shares():
    kinds = page_kinds("mixed", 10000, seed=1)
    counts = np.bincount(kinds, minlength=4)
    assert counts[fill.ZERO] == 4000 and counts[fill.TEXT] == 2500
    assert counts[fill.HALF] == 2000 and counts[fill.RANDOM] == 1500
    guest = GuestMemory(GuestSpec(1000 * PAGE, fill="mixed", seed=1))
    zero, _ = pages.split_zero_pages(guest.data, PAGE, np.arange(1000))
    assert zero.size == np.count_nonzero(page_kinds("mixed", 1000, seed=1) == fill.ZERO)


@pytest.mark.parametrize("kwargs, message", [
    ({"memory_bytes": 0}, "memory_bytes must be a size at least 1 B, got 0 B"),
    ({"memory_bytes": 8192.0}, "memory_bytes must be a size at least 1 B, got 8192.0"),
    ({"memory_bytes": True}, "memory_bytes must be a size at least 1 B, got True"),
    ({"memory_bytes": 5000}, "positive multiple"),
    ({"memory_bytes": 8192, "page_size": 3000}, "page_size must be a power of two >= 64 bytes, got 3000"),
    ({"memory_bytes": 8192, "page_size": "4096"}, "page_size must be a power of two >= 64 bytes, got '4096'"),
    ({"memory_bytes": 8192, "fill": "ones"}, "fill must be one of zero, random, half, text, mixed, got 'ones'"),
    ({"memory_bytes": 8192, "seed": -1}, r"seed must be a whole number from 0 to 18446744073709551615, got -1"),
    ({"memory_bytes": 8192, "seed": "7"}, "seed must be a whole number"),
    ({"memory_bytes": (1 << 32) * 4096 + 4096}, "a guest has at most 4,294,967,296 pages"),
])
def test_bad_specs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GuestSpec(**kwargs)


def test_blank_destination_is_zero_and_pages_are_views():
    guest = GuestMemory.blank(GuestSpec(16 * PAGE, page_size=PAGE))
    assert not guest.data.any()
    guest.page(15)[:] = 7
    assert guest.data[-1] == 7
    with pytest.raises(IndexError):
        guest.page(16)


def test_parallel_digest_equals_the_single_threaded_one():
    guest = GuestMemory(GuestSpec(10000 * PAGE, fill="mixed", seed=8))
    assert guest.digest() == pages.memory_digest(guest.data, PAGE)
