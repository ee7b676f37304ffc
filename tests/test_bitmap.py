import numpy as np
import pytest

from emulator.wire import protocol
from kernels import bitmap
from tests import reference


@pytest.mark.parametrize("n_pages", [1, 63, 64, 65, 128, 1000, 4097])
def test_harvest_matches_reference_at_the_edges(n_pages):
    pages = sorted({0, n_pages - 1, n_pages // 2, max(0, n_pages - 64)})
    fast, slow = bitmap.new_bitmap(n_pages), bitmap.new_bitmap(n_pages)
    bitmap.mark_dirty(fast, pages)
    reference.set_bits(slow, pages)
    assert np.array_equal(fast, slow)
    assert bitmap.count_dirty(fast) == len(pages)
    assert bitmap.harvest(fast).tolist() == reference.harvest(slow).tolist() == pages
    assert not fast.any()
    assert bitmap.harvest(fast).size == 0


def test_words_with_every_bit_set():
    words = np.full(3, np.uint64(2**64 - 1))
    expected = reference.harvest(words.copy())
    assert bitmap.count_dirty(words) == 192
    assert np.array_equal(bitmap.harvest(words), expected)
    assert expected.tolist() == list(range(192))
    assert not words.any()


@pytest.mark.parametrize("seed", range(5))
def test_harvest_random_bitmaps(seed):
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**64, 500, dtype=np.uint64)
    words[rng.integers(0, 500, 100)] = 0
    out = np.empty(words.size * 64, dtype=np.int64)
    expected = reference.harvest(words.copy())
    assert bitmap.count_dirty(words) == expected.size
    assert np.array_equal(bitmap.harvest(words, out), expected)


def test_mark_dirty_is_idempotent_and_checks_range():
    bits = bitmap.new_bitmap(100)
    bitmap.mark_dirty(bits, [5, 5, 99])
    assert bitmap.harvest(bits).tolist() == [5, 99]
    with pytest.raises(IndexError, match="outside"):
        bitmap.mark_dirty(bits, [128])
    with pytest.raises(IndexError):
        bitmap.mark_dirty(bits, [-1])


def test_wrappers_reject_bad_arrays():
    with pytest.raises(TypeError, match="uint64"):
        bitmap.harvest(np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="contiguous"):
        bitmap.harvest(np.zeros(8, dtype=np.uint64)[::2])
    with pytest.raises(ValueError, match="out holds"):
        bitmap.harvest(np.zeros(2, dtype=np.uint64), np.empty(10, dtype=np.int64))


@pytest.mark.parametrize("seed", range(4))
def test_runs_match_reference(seed):
    rng = np.random.default_rng(seed)
    pages = np.unique(rng.integers(0, 300, 150))
    runs = protocol.pages_to_runs(pages)
    assert (runs[:, 0].tolist(), runs[:, 1].tolist()) == reference.runs(pages.tolist())
    assert protocol.pages_to_runs(np.array([], dtype=np.int64)).size == 0
