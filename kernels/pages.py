"""Whole-page operations on a flat uint8 guest memory: gather, scatter, zero test, digest.

Pages are addressed by number; a page is `page_size` bytes at `number * page_size`.
Consecutive page numbers are copied as one block, so a run of dirty pages costs
one memcpy, not one per page.
"""

import functools

import numpy as np

from kernels.checks import require_array, require_memory, require_page_size, require_pages_in_range
from kernels.config import inlined, kernel
from kernels.memcopy import copy_bytes

_PRIME_1 = np.uint64(0x9E3779B185EBCA87)
_PRIME_2 = np.uint64(0xC2B2AE3D27D4EB4F)
_PRIME_3 = np.uint64(0x165667B19E3779F9)
_LOW_32 = np.uint64(0xFFFFFFFF)


@kernel
def run_end(pages, start, count):
    """Index just past the run of consecutive page numbers that starts at pages[start]."""
    end = start + 1
    while end < count and pages[end] == pages[end - 1] + 1:
        end += 1
    return end


@kernel
def _gather(memory, page_size, pages, count, out):
    i = 0
    while i < count:
        j = run_end(pages, i, count)
        copy_bytes(out, i * page_size, memory, pages[i] * page_size, (j - i) * page_size)
        i = j


@kernel
def _scatter(memory, page_size, pages, count, data):
    i = 0
    while i < count:
        j = run_end(pages, i, count)
        copy_bytes(memory, pages[i] * page_size, data, i * page_size, (j - i) * page_size)
        i = j


@kernel
def _zero(words, words_per_page, pages):
    for i in range(pages.size):
        first = pages[i] * words_per_page
        for k in range(first, first + words_per_page):
            words[k] = 0


@inlined
def _page_is_zero(page_words):
    # A non-zero page (the common case) is usually rejected on its first word;
    # otherwise one OR reduction over the page, without branches, which
    # vectorizes (an exit test every 64 bytes, or a loop not starting at 0, does
    # not: 11 GB/s instead of memory speed).
    if page_words[0] != 0:
        return False
    acc = np.uint64(0)
    for i in range(page_words.size):
        acc |= page_words[i]
    return acc == 0


@kernel
def _split_zero(words, words_per_page, pages, zero_out, nonzero_out):
    zeros = 0
    nonzeros = 0
    for i in range(pages.size):
        first = pages[i] * words_per_page
        if _page_is_zero(words[first : first + words_per_page]):
            zero_out[zeros] = pages[i]
            zeros += 1
        else:
            nonzero_out[nonzeros] = pages[i]
            nonzeros += 1
    return zeros, nonzeros


@inlined
def _content_hash(page_words):
    # Two sum reductions over the page's 64-bit words, each word first keyed by
    # its position: the keyed word, and its low half times its high half (a
    # 32x32->64 multiply, which AVX2 and AVX-512 both do four or eight at a time).
    # Sums let the compiler vectorize the loop; the key makes word order count.
    product = np.uint64(0)
    keyed_sum = np.uint64(0)
    # The page comes as its own view: indexed from 0, the loop vectorizes (from
    # `first + i` into the whole memory, it does not: 5 GB/s instead of 30).
    for i in range(page_words.size):
        keyed = page_words[i] ^ (_PRIME_1 + np.uint64(i) * _PRIME_2)
        product += (keyed & _LOW_32) * (keyed >> np.uint64(32))
        keyed_sum += keyed
    return product ^ (keyed_sum * _PRIME_3)


@inlined
def _finish(content, page):
    # The page number is mixed in so equal content at two addresses differs.
    digest = content + np.uint64(page) * _PRIME_1
    digest ^= digest >> np.uint64(33)
    digest *= _PRIME_2
    digest ^= digest >> np.uint64(29)
    digest *= _PRIME_3
    digest ^= digest >> np.uint64(32)
    return digest


@kernel
def _digests(words, words_per_page, first_page, out):
    for i in range(out.size):
        page = first_page + i
        first = page * words_per_page
        out[i] = _finish(_content_hash(words[first : first + words_per_page]), page)


@kernel
def _zero_digests(zero_content, pages, out):
    for i in range(pages.size):
        out[i] = _finish(zero_content, pages[i])


@inlined
def _replace(table, page, digest):
    """Put `digest` in the table for `page`; return what the table's sum (mod 2**64) and XOR change by."""
    old = table[page]
    table[page] = digest
    return digest - old, digest ^ old


@kernel
def _split_zero_digest(words, words_per_page, pages, zero_out, nonzero_out, table, zero_content):
    # One read of each page: the zero test rejects most pages on their first
    # word, and the hash then reads the page while it is in cache.
    zeros = 0
    nonzeros = 0
    total = np.uint64(0)
    xor = np.uint64(0)
    for i in range(pages.size):
        page = pages[i]
        first = page * words_per_page
        if _page_is_zero(words[first : first + words_per_page]):
            zero_out[zeros] = page
            zeros += 1
            digest = _finish(zero_content, page)
        else:
            nonzero_out[nonzeros] = page
            nonzeros += 1
            digest = _finish(_content_hash(words[first : first + words_per_page]), page)
        added, flipped = _replace(table, page, digest)
        total += added
        xor ^= flipped
    return zeros, nonzeros, total, xor


@kernel
def _scatter_digest(memory, page_size, pages, data, table):
    # Copy and hash page by page: the hash reads the page the copy just left in cache.
    data_words = data.view(np.uint64)
    words_per_page = page_size // 8
    total = np.uint64(0)
    xor = np.uint64(0)
    for i in range(pages.size):
        page = pages[i]
        copy_bytes(memory, page * page_size, data, i * page_size, page_size)
        first = i * words_per_page
        digest = _finish(_content_hash(data_words[first : first + words_per_page]), page)
        added, flipped = _replace(table, page, digest)
        total += added
        xor ^= flipped
    return total, xor


@kernel
def _replace_zero_digests(zero_content, pages, table):
    total = np.uint64(0)
    xor = np.uint64(0)
    for i in range(pages.size):
        page = pages[i]
        digest = _finish(zero_content, page)
        added, flipped = _replace(table, page, digest)
        total += added
        xor ^= flipped
    return total, xor


def _pages_arg(pages, n_pages):
    pages = require_array("pages", np.ascontiguousarray(pages, dtype=np.int64), np.int64)
    require_pages_in_range("pages", pages, n_pages)
    return pages


def gather(memory, page_size, pages, out):
    """Copy `pages` of `memory`, in order, into the front of `out`; return the number of bytes copied."""
    page_size = require_page_size(page_size)
    n_pages = require_memory("memory", memory, page_size)
    pages = _pages_arg(pages, n_pages)
    require_array("out", out, np.uint8, writable=True)
    nbytes = pages.size * page_size
    if out.size < nbytes:
        raise ValueError(f"out holds {out.size} bytes, {pages.size} pages need {nbytes}")
    _gather(memory, page_size, pages, pages.size, out)
    return nbytes


def _scatter_args(memory, page_size, pages, data):
    """Checked (page_size, n_pages, pages) for copying consecutive pages of `data` to `pages` of `memory`."""
    page_size = require_page_size(page_size)
    n_pages = require_memory("memory", memory, page_size)
    require_array("memory", memory, np.uint8, writable=True)
    pages = _pages_arg(pages, n_pages)
    require_array("data", data, np.uint8)
    if data.size != pages.size * page_size:
        raise ValueError(f"data holds {data.size} bytes, {pages.size} pages of {page_size} need {pages.size * page_size}")
    return page_size, n_pages, pages


def scatter(memory, page_size, pages, data):
    """Copy consecutive pages of `data` into `memory` at the page numbers `pages`."""
    page_size, _, pages = _scatter_args(memory, page_size, pages, data)
    _scatter(memory, page_size, pages, pages.size, data)


def zero_pages(memory, page_size, pages):
    """Set every byte of `pages` of `memory` to zero."""
    page_size = require_page_size(page_size)
    n_pages = require_memory("memory", memory, page_size)
    require_array("memory", memory, np.uint8, writable=True)
    _zero(memory.view(np.uint64), page_size // 8, _pages_arg(pages, n_pages))


def split_zero_pages(memory, page_size, pages):
    """Split `pages` into (all-zero pages, other pages), both int64 and in the input order."""
    page_size = require_page_size(page_size)
    n_pages = require_memory("memory", memory, page_size)
    pages = _pages_arg(pages, n_pages)
    zero_out = np.empty(pages.size, dtype=np.int64)
    nonzero_out = np.empty(pages.size, dtype=np.int64)
    zeros, nonzeros = _split_zero(memory.view(np.uint64), page_size // 8, pages, zero_out, nonzero_out)
    return zero_out[:zeros], nonzero_out[:nonzeros]


def _digest_table_arg(table, n_pages):
    require_array("table", table, np.uint64, writable=True)
    if table.size != n_pages:
        raise ValueError(f"table holds {table.size} digests, the memory has {n_pages} pages")
    return table


def split_zero_and_digest(memory, page_size, pages, table):
    """split_zero_pages, and each page's digest replaces its entry of `table` (uint64, one per page).

    Returns (zero pages, other pages, sum delta, xor delta): what the table's sum
    (mod 2**64) and XOR changed by, for a running digest (emulator.dataplane.digest).
    """
    page_size = require_page_size(page_size)
    n_pages = require_memory("memory", memory, page_size)
    pages = _pages_arg(pages, n_pages)
    table = _digest_table_arg(table, n_pages)
    zero_out = np.empty(pages.size, dtype=np.int64)
    nonzero_out = np.empty(pages.size, dtype=np.int64)
    zeros, nonzeros, total, xor = _split_zero_digest(memory.view(np.uint64), page_size // 8, pages, zero_out,
                                                     nonzero_out, table, _zero_content(page_size))
    return zero_out[:zeros], nonzero_out[:nonzeros], int(total), int(xor)


def scatter_and_digest(memory, page_size, pages, data, table):
    """scatter, and each placed page's digest replaces its entry of `table`; returns (sum delta, xor delta).

    Every byte of `data` is read once: each page is hashed as it is copied.
    """
    page_size, n_pages, pages = _scatter_args(memory, page_size, pages, data)
    table = _digest_table_arg(table, n_pages)
    total, xor = _scatter_digest(memory, page_size, pages, data, table)
    return int(total), int(xor)


def replace_zero_digests(page_size, pages, table):
    """`pages` are now all zero: their entries of `table` become zero-page digests; returns (sum delta, xor delta)."""
    page_size = require_page_size(page_size)
    pages = _pages_arg(pages, table.size)
    table = _digest_table_arg(table, table.size)
    total, xor = _replace_zero_digests(_zero_content(page_size), pages, table)
    return int(total), int(xor)


def page_digests(memory, page_size, first_page=0, count=None, out=None):
    """64-bit digests of `count` pages from `first_page` (all pages by default), as uint64."""
    page_size = require_page_size(page_size)
    n_pages = require_memory("memory", memory, page_size)
    if count is None:
        count = n_pages - first_page
    if not 0 <= first_page <= first_page + count <= n_pages:
        raise IndexError(f"pages [{first_page}, {first_page + count}) are outside [0, {n_pages})")
    if out is None:
        out = np.empty(count, dtype=np.uint64)
    require_array("out", out, np.uint64, writable=True)
    if out.size != count:
        raise ValueError(f"out holds {out.size} digests, expected {count}")
    _digests(memory.view(np.uint64), page_size // 8, first_page, out)
    return out


def zero_page_digests(page_size, pages):
    """Digests that all-zero pages numbered `pages` have, without reading any memory."""
    page_size = require_page_size(page_size)
    pages = require_array("pages", np.ascontiguousarray(pages, dtype=np.int64), np.int64)
    out = np.empty(pages.size, dtype=np.uint64)
    _zero_digests(_zero_content(page_size), pages, out)
    return out


@functools.cache
def _zero_content(page_size):
    return np.uint64(_content_hash(np.zeros(page_size // 8, dtype=np.uint64)))


def combine_digests(digests):
    """One 128-bit hex digest from per-page digests: their sum and their XOR, 64 bits each.

    Both can be updated in place when one page's digest changes (see emulator.dataplane.digest),
    so a running digest of memory costs nothing at the end of a migration.
    """
    digests = require_array("digests", digests, np.uint64)
    return format_digest(int(digests.sum(dtype=np.uint64)), int(np.bitwise_xor.reduce(digests)) if digests.size else 0)


def format_digest(total, xor):
    """The hex form of a (sum, xor) pair of 64-bit digest accumulators."""
    return f"{total & 0xFFFFFFFFFFFFFFFF:016x}{xor:016x}"


def memory_digest(memory, page_size):
    """A hex digest of the whole memory (see combine_digests)."""
    return combine_digests(page_digests(memory, page_size))
