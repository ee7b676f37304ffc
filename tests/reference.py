"""Plain Python/NumPy versions of the kernels, written for clarity, not speed.

Tests compare every kernel with these on edge cases and seeded random data,
with exact equality.
"""

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def harvest(bitmap):
    """Dirty page numbers of `bitmap`, ascending; clears it."""
    pages = [word * 64 + bit for word, value in enumerate(bitmap.tolist()) for bit in range(64) if value >> bit & 1]
    bitmap[:] = 0
    return np.array(pages, dtype=np.int64)


def set_bits(bitmap, pages):
    for page in pages:
        bitmap[page // 64] |= np.uint64(1 << (page % 64))


def runs(pages):
    starts, lengths = [], []
    for page in pages:
        if starts and page == starts[-1] + lengths[-1]:
            lengths[-1] += 1
        else:
            starts.append(page)
            lengths.append(1)
    return starts, lengths


def gather(memory, page_size, pages):
    return b"".join(memory[p * page_size : (p + 1) * page_size].tobytes() for p in pages)


def scatter(memory, page_size, pages, data):
    for i, p in enumerate(pages):
        memory[p * page_size : (p + 1) * page_size] = data[i * page_size : (i + 1) * page_size]


def is_zero_page(memory, page_size, page):
    return not memory[page * page_size : (page + 1) * page_size].any()


def page_digest(memory, page_size, page):
    return page_hash(memory[page * page_size : (page + 1) * page_size], page)


def page_hash(content, page):
    """The kernel's keyed product-and-sum hash of one page's bytes, then its number mixed in, with Python integers."""
    p1, p2, p3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
    words = np.ascontiguousarray(content).view("<u8").tolist()
    product = keyed_sum = 0
    for i, word in enumerate(words):
        keyed = word ^ ((p1 + i * p2) & MASK64)
        product = (product + (keyed & 0xFFFFFFFF) * (keyed >> 32)) & MASK64
        keyed_sum = (keyed_sum + keyed) & MASK64
    digest = product ^ (keyed_sum * p3 & MASK64)
    digest = (digest + page * p1) & MASK64
    digest ^= digest >> 33
    digest = digest * p2 & MASK64
    digest ^= digest >> 29
    digest = digest * p3 & MASK64
    return digest ^ (digest >> 32)


def memory_digest(memory, page_size):
    digests = [page_digest(memory, page_size, p) for p in range(memory.size // page_size)]
    total, xor = 0, 0
    for digest in digests:
        total, xor = (total + digest) & MASK64, xor ^ digest
    return f"{total:016x}{xor:016x}"


class SplitMix64:
    def __init__(self, state):
        self.state = int(state)

    def next(self):
        self.state = (self.state + GOLDEN) & MASK64
        z = self.state
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & MASK64
        return z ^ (z >> 31)

    def unit(self):
        return (self.next() >> 11) * (1.0 / 9007199254740992.0)


def writer(memory, page_size, bitmap, pattern, state, n_writes, *, write_size=8, hot_pages=1, hot_share=0.9,
           stride=1, spread=1, offset=0, cdf=None, cursor=0):
    """Apply `n_writes` writes the way kernels.writers does; return the pages written, in order."""
    rng = SplitMix64(state)
    n_pages = memory.size // page_size
    words = memory.view(np.uint64)
    words_per_page, words_per_write = page_size // 8, write_size // 8
    slots = words_per_page - words_per_write + 1
    written = []
    for _ in range(n_writes):
        if pattern == "sequential":
            page, cursor = cursor, (cursor + stride) % n_pages
        else:
            u = rng.unit()
            if pattern == "uniform":
                page = min(int(u * n_pages), n_pages - 1)
            else:
                if pattern == "hotset":
                    v = rng.unit()
                    if u < hot_share or hot_pages == n_pages:
                        rank = min(int(v * hot_pages), hot_pages - 1)
                    else:
                        rank = hot_pages + min(int(v * (n_pages - hot_pages)), n_pages - hot_pages - 1)
                else:
                    rank = min(int(np.searchsorted(cdf, u, side="right")), n_pages - 1)
                page = (rank * spread + offset) % n_pages
        bits = rng.next()
        first = page * words_per_page + (((bits >> 32) * slots) >> 32)
        for k in range(words_per_write):
            words[first + k] = np.uint64((bits + k) & MASK64)
        set_bits(bitmap, [page])
        written.append(page)
    return written


def uleb128(value):
    """The ULEB128 bytes of `value`."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def xbzrle_encode(old, new):
    """XBZRLE encoding of page `new` against `old` (bytes): (zrun, nzrun, changed bytes)... with no trailing zrun."""
    out, i, n = bytearray(), 0, len(new)
    while i < n:
        start = i
        while i < n and old[i] == new[i]:
            i += 1
        if i == n:
            break
        zrun, start = i - start, i
        while i < n and old[i] != new[i]:
            i += 1
        out += uleb128(zrun) + uleb128(i - start) + bytes(new[start:i])
    return bytes(out)


def xbzrle_decode(encoded, old):
    """Page `old` (bytes) with `encoded` applied; ValueError if it is malformed or overruns the page."""
    page, i, d = bytearray(old), 0, 0

    def number():
        nonlocal i
        value = shift = 0
        while True:
            if i >= len(encoded) or shift >= 35:
                raise ValueError("ULEB128 cut short or too long")
            byte = encoded[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    while i < len(encoded):
        d += number()
        count = number()
        if count == 0 or d + count > len(page) or i + count > len(encoded):
            raise ValueError("a run overruns the page or the encoding")
        page[d : d + count] = encoded[i : i + count]
        d, i = d + count, i + count
    return bytes(page)
