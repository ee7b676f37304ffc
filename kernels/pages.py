"""Whole-page operations on a flat uint8 guest memory: gather, scatter, zero test, digest.

Pages are addressed by number; a page is `page_size` bytes at `number * page_size`.
Consecutive page numbers are copied as one block, so a run of dirty pages costs
one memcpy, not one per page.
"""

import functools

import numpy as np

from kernels.checks import require_array, require_memory, require_page_size, require_pages_in_range
from kernels.config import kernel
from kernels.memcopy import copy_bytes

_PRIME_1 = np.uint64(0x9E3779B185EBCA87)
_PRIME_2 = np.uint64(0xC2B2AE3D27D4EB4F)
_PRIME_3 = np.uint64(0x165667B19E3779F9)


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


@kernel
def _page_is_zero(words, first, words_per_page):
    # OR 8 words at a time: branch once per 64 bytes, and a non-zero page
    # (the common case) is rejected after its first cache line.
    for block in range(first, first + words_per_page, 8):
        acc = words[block] | words[block + 1] | words[block + 2] | words[block + 3]
        acc |= words[block + 4] | words[block + 5] | words[block + 6] | words[block + 7]
        if acc != 0:
            return False
    return True


@kernel
def _split_zero(words, words_per_page, pages, zero_out, nonzero_out):
    zeros = 0
    nonzeros = 0
    for i in range(pages.size):
        if _page_is_zero(words, pages[i] * words_per_page, words_per_page):
            zero_out[zeros] = pages[i]
            zeros += 1
        else:
            nonzero_out[nonzeros] = pages[i]
            nonzeros += 1
    return zeros, nonzeros


@kernel
def _rotl(value, bits):
    return (value << np.uint64(bits)) | (value >> np.uint64(64 - bits))


@kernel
def _content_hash(words, first, words_per_page):
    # Four independent multiply-rotate lanes keep the multiplier busy.
    lane0 = _PRIME_1
    lane1 = _PRIME_2
    lane2 = _PRIME_3
    lane3 = _PRIME_1 ^ _PRIME_2
    for block in range(first, first + words_per_page, 4):
        lane0 = _rotl(lane0 + words[block] * _PRIME_2, 31) * _PRIME_1
        lane1 = _rotl(lane1 + words[block + 1] * _PRIME_2, 31) * _PRIME_1
        lane2 = _rotl(lane2 + words[block + 2] * _PRIME_2, 31) * _PRIME_1
        lane3 = _rotl(lane3 + words[block + 3] * _PRIME_2, 31) * _PRIME_1
    return _rotl(lane0, 1) + _rotl(lane1, 7) + _rotl(lane2, 12) + _rotl(lane3, 18)


@kernel
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
        out[i] = _finish(_content_hash(words, page * words_per_page, words_per_page), page)


@kernel
def _batch_digests(words, words_per_page, pages, out):
    for i in range(pages.size):
        out[i] = _finish(_content_hash(words, i * words_per_page, words_per_page), pages[i])


@kernel
def _zero_digests(zero_content, pages, out):
    for i in range(pages.size):
        out[i] = _finish(zero_content, pages[i])


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


def scatter(memory, page_size, pages, data):
    """Copy consecutive pages of `data` into `memory` at the page numbers `pages`."""
    page_size = require_page_size(page_size)
    n_pages = require_memory("memory", memory, page_size)
    require_array("memory", memory, np.uint8, writable=True)
    pages = _pages_arg(pages, n_pages)
    require_array("data", data, np.uint8)
    if data.size != pages.size * page_size:
        raise ValueError(f"data holds {data.size} bytes, {pages.size} pages of {page_size} need {pages.size * page_size}")
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


def batch_digests(data, page_size, pages):
    """Digests of a batch: page i of `data` (consecutive pages) is guest page pages[i]."""
    page_size = require_page_size(page_size)
    require_array("data", data, np.uint8)
    pages = require_array("pages", np.ascontiguousarray(pages, dtype=np.int64), np.int64)
    if data.size != pages.size * page_size:
        raise ValueError(f"data holds {data.size} bytes, {pages.size} pages of {page_size} need {pages.size * page_size}")
    out = np.empty(pages.size, dtype=np.uint64)
    _batch_digests(data.view(np.uint64), page_size // 8, pages, out)
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
    return np.uint64(_content_hash(np.zeros(page_size // 8, dtype=np.uint64), 0, page_size // 8))


def combine_digests(digests):
    """One 128-bit hex digest from per-page digests: their sum and their XOR, 64 bits each.

    Both can be updated in place when one page's digest changes (see emulator.digest),
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
