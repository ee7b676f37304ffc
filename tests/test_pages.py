import numpy as np
import pytest

from kernels import pages
from tests import reference

PAGE = 4096


@pytest.fixture
def memory():
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, 64 * PAGE, dtype=np.uint8)
    for zero_page in (0, 5, 6, 63):
        data[zero_page * PAGE : (zero_page + 1) * PAGE] = 0
    data[10 * PAGE + PAGE - 1] = 0  # a page that is zero but for its last byte...
    data[10 * PAGE : 10 * PAGE + PAGE - 1] = 0
    data[10 * PAGE + PAGE - 1] = 1
    return data


SELECTIONS = [[], [0], [63], [0, 1, 2, 3], [5, 7, 9, 10, 11, 63], list(range(64)), [62, 63]]


@pytest.mark.parametrize("selection", SELECTIONS)
def test_gather_matches_reference(memory, selection):
    out = np.full(64 * PAGE, 0xAA, dtype=np.uint8)
    assert pages.gather(memory, PAGE, selection, out) == len(selection) * PAGE
    assert out[: len(selection) * PAGE].tobytes() == reference.gather(memory, PAGE, selection)
    assert (out[len(selection) * PAGE :] == 0xAA).all()  # nothing written past the end


@pytest.mark.parametrize("selection", SELECTIONS)
def test_scatter_matches_reference(memory, selection):
    data = np.random.default_rng(1).integers(0, 256, len(selection) * PAGE, dtype=np.uint8)
    fast, slow = memory.copy(), memory.copy()
    pages.scatter(fast, PAGE, selection, data)
    reference.scatter(slow, PAGE, selection, data)
    assert np.array_equal(fast, slow)


def test_zero_pages_match_reference(memory):
    everything = np.arange(64)
    zero, nonzero = pages.split_zero_pages(memory, PAGE, everything)
    expected_zero = [p for p in range(64) if reference.is_zero_page(memory, PAGE, p)]
    assert zero.tolist() == expected_zero == [0, 5, 6, 63]
    assert nonzero.tolist() == [p for p in range(64) if p not in expected_zero]


@pytest.mark.parametrize("selection", SELECTIONS)
def test_zero_pages_clears_exactly_those_pages(memory, selection):
    expected = memory.copy()
    for page in selection:
        expected[page * PAGE : (page + 1) * PAGE] = 0
    pages.zero_pages(memory, PAGE, selection)
    assert np.array_equal(memory, expected)


@pytest.mark.parametrize("page_size", [64, 4096, 65536])
def test_digests_match_reference(page_size):
    data = np.random.default_rng(page_size).integers(0, 256, 8 * page_size, dtype=np.uint8)
    data[:page_size] = 0
    digests = pages.page_digests(data, page_size)
    assert digests.tolist() == [reference.page_digest(data, page_size, p) for p in range(8)]


def test_zero_digests_equal_the_memory_digests(memory):
    everything = pages.page_digests(memory, PAGE)
    zero_pages = np.array([0, 5, 6, 63])
    assert pages.zero_page_digests(PAGE, zero_pages).tolist() == everything[zero_pages].tolist()


def _digest_table(memory, page_size):
    """A digest table as a running digest holds it, with stale entries the kernels must replace."""
    return np.random.default_rng(3).integers(0, 2**63, memory.size // page_size, dtype=np.uint64)


def _table_delta(before, after):
    """What a table's sum (mod 2**64) and XOR changed by, with Python integers."""
    mask = (1 << 64) - 1
    total = (sum(after.tolist()) - sum(before.tolist())) & mask
    xor = int(np.bitwise_xor.reduce(before)) ^ int(np.bitwise_xor.reduce(after))
    return total, xor


@pytest.mark.parametrize("selection", SELECTIONS)
def test_split_zero_and_digest_matches_reference(memory, selection):
    table = _digest_table(memory, PAGE)
    before = table.copy()
    zero, nonzero, total, xor = pages.split_zero_and_digest(memory, PAGE, selection, table)
    assert zero.tolist() == [p for p in selection if reference.is_zero_page(memory, PAGE, p)]
    assert nonzero.tolist() == [p for p in selection if not reference.is_zero_page(memory, PAGE, p)]
    expected = before.copy()
    for page in selection:
        expected[page] = reference.page_digest(memory, PAGE, page)
    assert table.tolist() == expected.tolist()  # the selected entries replaced, no other touched
    assert (total, xor) == _table_delta(before, table)


@pytest.mark.parametrize("selection", SELECTIONS)
def test_scatter_and_digest_matches_reference(memory, selection):
    data = np.random.default_rng(1).integers(0, 256, len(selection) * PAGE, dtype=np.uint8)
    if selection:
        data[:PAGE] = 0  # a zero page among them
    fast, slow = memory.copy(), memory.copy()
    table = _digest_table(memory, PAGE)
    before = table.copy()
    total, xor = pages.scatter_and_digest(fast, PAGE, selection, np.frombuffer(data.tobytes(), np.uint8), table)
    reference.scatter(slow, PAGE, selection, data)
    assert np.array_equal(fast, slow)
    expected = before.copy()
    for page in selection:
        expected[page] = reference.page_digest(slow, PAGE, page)
    assert table.tolist() == expected.tolist()
    assert (total, xor) == _table_delta(before, table)


def test_replace_zero_digests_matches_reference():
    zeros = np.zeros(16 * PAGE, dtype=np.uint8)
    table = _digest_table(zeros, PAGE)
    before = table.copy()
    total, xor = pages.replace_zero_digests(PAGE, [2, 3, 15], table)
    expected = before.copy()
    for page in (2, 3, 15):
        expected[page] = reference.page_digest(zeros, PAGE, page)
    assert table.tolist() == expected.tolist()
    assert (total, xor) == _table_delta(before, table)


def test_memory_digest_matches_reference(memory):
    small = memory[: 8 * PAGE]
    assert pages.memory_digest(small, PAGE) == reference.memory_digest(small, PAGE)


def test_digest_sees_one_flipped_bit_and_the_page_address(memory):
    before = pages.memory_digest(memory, PAGE)
    memory[37 * PAGE + 100] ^= 1
    assert pages.memory_digest(memory, PAGE) != before
    zeros = np.zeros(2 * PAGE, dtype=np.uint8)
    first, second = pages.page_digests(zeros, PAGE)
    assert first != second  # equal content at two addresses differs


def test_wrappers_reject_bad_input(memory):
    with pytest.raises(IndexError, match="outside"):
        pages.gather(memory, PAGE, [64], np.empty(PAGE, dtype=np.uint8))
    with pytest.raises(ValueError, match="out holds"):
        pages.gather(memory, PAGE, [1, 2], np.empty(PAGE, dtype=np.uint8))
    with pytest.raises(ValueError, match="power of two"):
        pages.gather(memory, 3000, [1], np.empty(PAGE, dtype=np.uint8))
    with pytest.raises(ValueError, match="whole number"):
        pages.page_digests(memory[:100], PAGE)
    with pytest.raises(ValueError, match="data holds"):
        pages.scatter(memory, PAGE, [1], np.empty(10, dtype=np.uint8))
    with pytest.raises(ValueError, match="table holds"):
        pages.split_zero_and_digest(memory, PAGE, [1], np.zeros(3, dtype=np.uint64))
    with pytest.raises(TypeError, match="dtype uint64"):
        pages.scatter_and_digest(memory, PAGE, [1], np.zeros(PAGE, dtype=np.uint8), np.zeros(64, dtype=np.int64))
    with pytest.raises(IndexError, match="outside"):
        pages.replace_zero_digests(PAGE, [64], np.zeros(64, dtype=np.uint64))
    with pytest.raises(ValueError, match="writable"):
        readonly = memory.copy()
        readonly.flags.writeable = False
        pages.scatter(readonly, PAGE, [1], np.empty(PAGE, dtype=np.uint8))


def test_the_readme_digest_test_vectors():
    """The wire protocol's page-hash test vectors (README, "Wire protocol"), against kernel and reference."""
    zero = np.zeros(PAGE, dtype=np.uint8)
    ramp = (np.arange(PAGE) % 256).astype(np.uint8)
    ones = np.full(PAGE, 0xFF, dtype=np.uint8)
    memory = np.concatenate([zero, ramp, ones, ramp])
    assert pages.memory_digest(memory, PAGE) == reference.memory_digest(memory, PAGE) == \
        "b7d3ae228b6baa0ed81072e3fb9bf430"
    for content, page, expected in ((zero, 0, 0x773FD4DE67219863), (ramp, 1, 0x4BB2298503A3F226),
                                    (ones, 7, 0xBED3C0238E820ED6)):
        placed = np.zeros((page + 1) * PAGE, dtype=np.uint8)
        placed[page * PAGE :] = content
        assert int(pages.page_digests(placed, PAGE)[page]) == reference.page_digest(placed, PAGE, page) == expected
