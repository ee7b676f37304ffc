"""XBZRLE: a page sent again as the runs of bytes where it differs from the copy already sent.

A page's encoding (QEMU's docs/xbzrle.txt) is a sequence of pairs: zrun, a ULEB128
count of unchanged bytes, then nzrun, a ULEB128 count >= 1 of changed bytes followed
by those bytes (their new values). A trailing run of unchanged bytes is left out, so an
unchanged page encodes to nothing. A batch is, page after page in message order, a
4-byte little-endian length and that page's encoding.

The source keeps a bounded cache of pages as last sent (direct-mapped: a page's slot is
its number modulo the slot count, as QEMU's cache is). A page is encoded against its
cached copy, and the cached copy then has the same encoding applied: the cache holds
exactly what the destination will hold, however a writer changes the page meanwhile.
The destination applies an encoding to its own copy of the page, checking every count
against the page and the payload: a hostile delta is refused, never written past a page.
"""

import numpy as np

from kernels.checks import require_array, require_memory, require_page_size, require_pages_in_range
from kernels.config import inlined, kernel
from kernels.memcopy import copy_bytes
from kernels.pages import _content_hash, _finish, _replace

LENGTH_BYTES = 4  # each page's encoding length, little-endian
MAX_ULEB_SHIFT = 35  # counts are below 2**35 (pages are far smaller): a longer ULEB128 is malformed


@inlined
def _put_uleb(out, d, limit, value):
    """Write `value` as ULEB128 at out[d:limit]; the index after it, or -1 if it does not fit."""
    while True:
        if d >= limit:
            return -1
        byte = value & 0x7F
        value >>= 7
        if value:
            out[d] = byte | 0x80
            d += 1
        else:
            out[d] = byte
            return d + 1


@inlined
def _get_uleb(src, i, end):
    """(value, index after it) of the ULEB128 at src[i:end]; index -1 if malformed or cut short."""
    value = 0
    shift = 0
    while True:
        if i >= end or shift >= MAX_ULEB_SHIFT:
            return 0, -1
        byte = np.int64(src[i])
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


@inlined
def _encode_page(old, new, out, d, limit):
    """Encode `new` against `old` (equal-sized byte arrays) at out[d:limit]; the end, or -1 if it overflows."""
    n = new.size
    i = 0
    while i < n:
        start = i
        while i < n and old[i] == new[i]:
            i += 1
        if i == n:
            break
        zrun = i - start
        start = i
        while i < n and old[i] != new[i]:
            i += 1
        d = _put_uleb(out, d, limit, zrun)
        if d < 0:
            return -1
        d = _put_uleb(out, d, limit, i - start)
        if d < 0 or d + i - start > limit:
            return -1
        for k in range(start, i):  # a byte a writer changes meanwhile is still a valid changed byte
            out[d] = new[k]
            d += 1
    return d


@inlined
def _decode_page(src, i, end, dst, base, size):
    """Apply the encoding at src[i:end] to dst[base:base + size]; 0, or -1 if it is malformed."""
    d = 0
    while i < end:
        zrun, i = _get_uleb(src, i, end)
        if i < 0:
            return -1
        d += zrun
        nzrun, i = _get_uleb(src, i, end)
        if i < 0 or nzrun == 0 or d + nzrun > size or i + nzrun > end:
            return -1
        for k in range(nzrun):
            dst[base + d + k] = src[i + k]
        d += nzrun
        i += nzrun
    return 0


@kernel
def _encode_batch(memory, page_size, pages, cache, cached_pages, out, deltas, others):
    n_slots = cached_pages.size
    d = 0
    n_deltas = n_others = misses = overflows = 0
    for i in range(pages.size):
        page = pages[i]
        slot = page % n_slots
        if cached_pages[slot] != page:
            misses += 1
            others[n_others] = page
            n_others += 1
            continue
        old = cache[slot * page_size : (slot + 1) * page_size]
        start = d + LENGTH_BYTES
        end = _encode_page(old, memory[page * page_size : (page + 1) * page_size], out, start,
                           start + page_size - LENGTH_BYTES - 1)  # worth it only if smaller than the page
        if end < 0:
            overflows += 1
            others[n_others] = page
            n_others += 1
            continue
        length = end - start
        for k in range(LENGTH_BYTES):
            out[d + k] = (length >> (8 * k)) & 0xFF
        _decode_page(out, start, end, cache, slot * page_size, page_size)  # the cache now holds what was sent
        deltas[n_deltas] = page
        n_deltas += 1
        d = end
    return d, n_deltas, n_others, misses, overflows


@kernel
def _remember(cache, cached_pages, page_size, pages, data):
    n_slots = cached_pages.size
    for i in range(pages.size):
        slot = pages[i] % n_slots
        copy_bytes(cache, slot * page_size, data, i * page_size, page_size)
        cached_pages[slot] = pages[i]


@kernel
def _forget(cached_pages, pages):
    n_slots = cached_pages.size
    for i in range(pages.size):
        slot = pages[i] % n_slots
        if cached_pages[slot] == pages[i]:
            cached_pages[slot] = -1


@kernel
def _apply_batch(memory, words, page_size, pages, payload, table, digest):
    words_per_page = page_size // 8
    i = 0
    total = np.uint64(0)
    xor = np.uint64(0)
    for p in range(pages.size):
        if i + LENGTH_BYTES > payload.size:
            return p, total, xor
        length = 0
        for k in range(LENGTH_BYTES):
            length |= np.int64(payload[i + k]) << (8 * k)
        i += LENGTH_BYTES
        if length > payload.size - i:
            return p, total, xor
        page = pages[p]
        if _decode_page(payload, i, i + length, memory, page * page_size, page_size) < 0:
            return p, total, xor
        i += length
        if digest:
            first = page * words_per_page
            added, flipped = _replace(table, page, _finish(_content_hash(words[first : first + words_per_page]),
                                                           page))
            total += added
            xor ^= flipped
    if i != payload.size:
        return pages.size, total, xor  # bytes past the last page: malformed too
    return -1, total, xor


class Cache:
    """The source's XBZRLE cache: `slots` pages of `page_size` bytes, and the counts QEMU's xbzrle-cache reports.

    Used from one thread (the sender's): encode() and remember() change the slots.
    """

    def __init__(self, size_bytes, page_size):
        require_page_size(page_size)
        self.page_size = page_size
        self.slots = max(1, size_bytes // page_size)
        self.data = np.zeros(self.slots * page_size, dtype=np.uint8)
        self.pages = np.full(self.slots, -1, dtype=np.int64)
        self.delta_pages = self.delta_bytes = self.misses = self.overflows = self.looked_up = 0

    def encode(self, memory, pages):
        """(pages sent as deltas, their batch payload, pages to send whole) of `pages` (int64, of `memory`).

        The pages to send whole are cache misses and deltas no smaller than a page: send them, then remember()."""
        n_pages = require_memory("memory", memory, self.page_size)
        pages = require_array("pages", np.ascontiguousarray(pages, dtype=np.int64), np.int64)
        require_pages_in_range("pages", pages, n_pages)
        out = np.empty(pages.size * self.page_size, dtype=np.uint8)
        deltas = np.empty(pages.size, dtype=np.int64)
        others = np.empty(pages.size, dtype=np.int64)
        length, n_deltas, n_others, misses, overflows = _encode_batch(memory, self.page_size, pages, self.data,
                                                                       self.pages, out, deltas, others)
        self.looked_up += pages.size
        self.misses += misses
        self.overflows += overflows
        self.delta_pages += n_deltas
        self.delta_bytes += length
        return deltas[:n_deltas], out[:length], others[:n_others]

    def remember(self, pages, data):
        """Cache `pages` as sent whole: `data` holds them in order (a copy, not the live memory)."""
        pages = require_array("pages", np.ascontiguousarray(pages, dtype=np.int64), np.int64)
        data = require_array("data", data, np.uint8)
        if data.size != pages.size * self.page_size:
            raise ValueError(f"data holds {data.size} bytes, expected {pages.size} pages of {self.page_size}")
        _remember(self.data, self.pages, self.page_size, pages, data)

    def forget(self, pages):
        """`pages` were sent as zero pages: their cached copies are stale."""
        _forget(self.pages, require_array("pages", np.ascontiguousarray(pages, dtype=np.int64), np.int64))


def apply_batch(memory, page_size, pages, payload, table=None):
    """Apply an XBZRLE batch to `pages` of `memory` in place; with a digest `table`, replace their entries.

    Returns (index of the first malformed page or -1, sum delta, xor delta). A malformed page
    is left part-applied at most within its own bytes; nothing outside `pages` is written."""
    require_page_size(page_size)
    n_pages = require_memory("memory", memory, page_size)
    pages = require_array("pages", np.ascontiguousarray(pages, dtype=np.int64), np.int64)
    require_pages_in_range("pages", pages, n_pages)
    payload = np.frombuffer(payload, dtype=np.uint8)
    digest = table is not None
    table = table if digest else np.zeros(0, dtype=np.uint64)
    bad, total, xor = _apply_batch(memory, memory.view(np.uint64), page_size, pages, payload, table, digest)
    return int(bad), int(total), int(xor)
