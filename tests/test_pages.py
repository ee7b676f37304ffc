import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from emulator.dataplane.digest import RunningDigest
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


README = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"  # where the test vectors are
_PAGE_CONTENT = {  # the README's words for a page's bytes, for a page of n bytes
    "all zero": lambda n: np.zeros(n, dtype=np.uint8),
    "ramp": lambda n: (np.arange(n) % 256).astype(np.uint8),
    "all `0xFF`": lambda n: np.full(n, 0xFF, dtype=np.uint8),
    "byte 0 = 1": lambda n: np.eye(1, n, 0, dtype=np.uint8)[0],
    "byte 4088 = 1": lambda n: np.eye(1, n, 4088, dtype=np.uint8)[0],
    "bytes 0, 1, ..., 63": lambda n: np.arange(n, dtype=np.uint8),
}


def _readme_rows(first_header):
    """The rows of the README table whose header row starts with `first_header`, as lists of cells."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            return rows
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _page(description):
    """(bytes, size) of "all zero" (a PAGE-byte page) or "64-byte page, all zero", "16384-byte page (a 16 KiB
    block), all zero"."""
    sized = re.match(r"(\d+)-byte page(?: \([^)]*\))?, (.*)", description)
    size, content = (int(sized.group(1)), sized.group(2)) if sized else (PAGE, description)
    return _PAGE_CONTENT[content](size), size


def test_the_readme_page_digest_vectors():
    """Every page-hash test vector the wire protocol gives (README), against the kernel and the reference."""
    rows = _readme_rows("page content")
    assert len(rows) >= 9
    for description, number, digest in rows:
        content, size = _page(description)
        number = int(number)
        placed = np.zeros(size * (min(number, 7) + 1), dtype=np.uint8)
        placed[-size:] = content  # the page's own number is what is hashed in, not its place here
        expected = int(digest.strip("`"), 16)
        assert reference.page_hash(content, number) == expected, description
        if number < 8:
            assert int(pages.page_digests(placed, size)[number]) == expected, description


def test_the_readme_memory_digest_vectors():
    rows = _readme_rows("memory (4096-byte pages)")
    contents = {"zero": np.zeros(PAGE, dtype=np.uint8), "ramp": _PAGE_CONTENT["ramp"](PAGE),
                "`0xFF`": np.full(PAGE, 0xFF, dtype=np.uint8)}
    memories = [np.concatenate([contents[name] for name in ("zero", "ramp", "`0xFF`", "ramp")]),
                np.zeros(4 * PAGE, dtype=np.uint8)]
    assert len(rows) == len(memories)
    for (_, page_digests, digest), memory in zip(rows, memories):
        digest = digest.strip("`")
        assert pages.memory_digest(memory, PAGE) == reference.memory_digest(memory, PAGE) == digest
        if page_digests:
            listed = [int(d.strip(" `"), 16) for d in page_digests.split(",")]
            assert [int(d) for d in pages.page_digests(memory, PAGE)] == listed


def test_the_readme_disk_digest_vector():
    """The disk digest is the memory digest over blocks: the README's zero disk, and what a destination starts from."""
    found = re.search(r"A disk of 4 zero 16 KiB blocks .*?has the disk digest\s+`([0-9a-f]{32})`",
                      README.read_text(encoding="utf-8"), re.S)
    disk = np.zeros(4 * 16384, dtype=np.uint8)
    assert pages.memory_digest(disk, 16384) == reference.memory_digest(disk, 16384) == found.group(1)
    assert RunningDigest(4, 16384).value() == found.group(1)


def test_the_readme_device_state_digest_vectors():
    text = README.read_text(encoding="utf-8")
    empty, abc = re.search(r"empty input `([0-9a-f]{32})`; the 3\s+bytes `abc` `([0-9a-f]{32})`", text).groups()
    assert hashlib.blake2b(b"", digest_size=16).hexdigest() == empty
    assert hashlib.blake2b(b"abc", digest_size=16).hexdigest() == abc
