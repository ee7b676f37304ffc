"""Guest writers: pick a page by pattern, change real bytes of it, then mark it dirty.

Patterns (page chosen per write):
    uniform     every page equally likely;
    hotset      a `hot_share` of writes go to a hot set of `hot_pages` pages, the rest
                to the cold pages (a writable working set);
    sequential  stride through memory, `stride` pages per write, wrapping;
    zipf        page of rank k is written with probability proportional to 1/k**s.
For hotset and zipf the hot pages are spread over memory by the bijection
rank -> (rank * spread + offset) mod n_pages, so the hot set is not one block.

Each writer thread owns its RNG state (splitmix64, one uint64) and its cursor,
so runs are reproducible per seed and threads share nothing but memory and
the bitmap. A write stores `write_size` bytes (8-byte aligned, a random
offset within the page) of fresh random data, then sets the page's bit with
an atomic OR: the bytes are in memory before the bit can be harvested.

After a post-copy resume some pages have not arrived yet: given a map of
missing pages, a writer stops before it would touch one and keeps that page
as its next write (`pending_page`), so the write it was about to make is made,
unchanged, once the page is in place: the page fault of a real guest.
"""

import numpy as np

from kernels.bitmap import WORD_BITS, is_set, set_dirty
from kernels.checks import require_array, require_memory, require_page_size
from kernels.config import kernel

UNIFORM, HOTSET, SEQUENTIAL, ZIPF = 0, 1, 2, 3
PATTERNS = {"uniform": UNIFORM, "hotset": HOTSET, "sequential": SEQUENTIAL, "zipf": ZIPF}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53


@kernel
def next_random(state):
    """splitmix64: advance state[0] and return 64 random bits."""
    state[0] += _GOLDEN
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


@kernel
def _unit(bits):
    return np.float64(bits >> np.uint64(11)) * _TO_UNIT


@kernel
def _choose_page(pattern, n_pages, hot_pages, hot_share, stride, spread, offset, zipf_cdf, state, cursor):
    if pattern == SEQUENTIAL:
        page = cursor[0]
        following = page + stride
        cursor[0] = following if following < n_pages else following % n_pages
        return page
    u = _unit(next_random(state))
    if pattern == UNIFORM:
        return min(np.int64(u * n_pages), n_pages - 1)
    if pattern == HOTSET:
        v = _unit(next_random(state))
        if u < hot_share or hot_pages == n_pages:
            rank = min(np.int64(v * hot_pages), hot_pages - 1)
        else:
            rank = hot_pages + min(np.int64(v * (n_pages - hot_pages)), n_pages - hot_pages - 1)
    else:
        rank = min(np.int64(np.searchsorted(zipf_cdf, u, side="right")), n_pages - 1)
    return (rank * spread + offset) % n_pages


@kernel
def _write(memory, page_size, bitmap, missing, pending, pattern, hot_pages, hot_share, stride, spread, offset,
           zipf_cdf, state, cursor, n_writes, write_size, log, log_pos):
    words = memory.view(np.uint64)
    n_pages = memory.size // page_size
    words_per_page = page_size // 8
    words_per_write = write_size // 8
    slots = words_per_page - words_per_write + 1
    page = pending[0]  # a write that stopped before a missing page: made first, to that page
    pending[0] = -1
    for done in range(n_writes):
        if page < 0:
            page = _choose_page(pattern, n_pages, hot_pages, hot_share, stride, spread, offset, zipf_cdf, state,
                                cursor)
        if missing.size and is_set(missing, page):
            pending[0] = page
            return done
        bits = next_random(state)
        # slot = floor(high 32 bits / 2**32 x slots): a multiply instead of a division
        first = page * words_per_page + np.int64(((bits >> np.uint64(32)) * np.uint64(slots)) >> np.uint64(32))
        for k in range(words_per_write):
            words[first + k] = bits + np.uint64(k)
        set_dirty(bitmap, page)
        if log_pos[0] < log.size:
            log[log_pos[0]] = page
            log_pos[0] += 1
        page = -1
    return n_writes


def zipf_cdf(n_pages, s):
    """Cumulative probabilities of ranks 0..n_pages-1 under Zipf's law with exponent `s` (> 0)."""
    if not s > 0:
        raise ValueError(f"zipf exponent must be > 0, got {s!r}")
    weights = 1.0 / np.arange(1, n_pages + 1, dtype=np.float64) ** s
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def seed_state(seed, stream):
    """A writer's RNG state for `seed` and stream (thread) number: a uint64 array of one."""
    mixed = np.array([(int(seed) ^ ((stream + 1) * int(_GOLDEN))) & (2**64 - 1)], dtype=np.uint64)
    next_random(mixed)  # decorrelate neighbouring seeds
    return mixed


class WriterPattern:
    """One writer's pattern and state: call `write(n)` to perform n page writes.

    memory: flat uint8 guest memory; bitmap: its dirty bitmap; pattern: a name in
    PATTERNS; write_size: bytes per write, a multiple of 8 from 8 to page_size;
    hot_fraction/hot_share: hotset parameters (share of pages, share of writes);
    stride: pages per step (sequential); zipf_s: zipf exponent; zipf_table: its
    zipf_cdf(n_pages, zipf_s), to share one (8 bytes a page) between writers, made
    here if None; spread_seed picks where hot pages lie; log: optional int64 array
    that records written pages; missing: a bitmap of pages not yet arrived
    (post-copy), which a write waits for (see `write`).
    """

    def __init__(self, memory, page_size, bitmap, pattern="uniform", *, seed=0, stream=0, write_size=8,
                 hot_fraction=0.1, hot_share=0.9, stride=1, zipf_s=1.0, zipf_table=None, start_page=0, log=None,
                 missing=None):
        self.page_size = require_page_size(page_size)
        self.n_pages = require_memory("memory", memory, self.page_size)
        require_array("memory", memory, np.uint8, writable=True)
        require_array("bitmap", bitmap, np.uint64, writable=True)
        if bitmap.size * WORD_BITS < self.n_pages:
            raise ValueError(f"bitmap covers {bitmap.size * WORD_BITS} pages, memory has {self.n_pages}")
        if pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {pattern!r}: expected one of {', '.join(PATTERNS)}")
        if write_size % 8 or not 8 <= write_size <= self.page_size:
            raise ValueError(f"write size must be a multiple of 8 from 8 to {self.page_size} bytes, got {write_size!r}")
        if not 0 < hot_fraction <= 1 or not 0 <= hot_share <= 1:
            raise ValueError(f"hotset needs 0 < hot_fraction <= 1 and 0 <= hot_share <= 1, got {hot_fraction}, {hot_share}")
        if not 1 <= stride:
            raise ValueError(f"stride must be >= 1 page, got {stride!r}")
        self.memory, self.bitmap = memory, bitmap
        self.pattern = PATTERNS[pattern]
        self.write_size = int(write_size)
        self.hot_pages = max(1, int(round(hot_fraction * self.n_pages)))
        self.hot_share = float(hot_share)
        self.stride = int(stride)
        self.spread, self.offset = _spread(self.n_pages, seed)
        if pattern != "zipf":
            self.cdf = np.empty(0, dtype=np.float64)
        elif zipf_table is None:
            self.cdf = zipf_cdf(self.n_pages, zipf_s)
        else:
            self.cdf = require_array("zipf_table", zipf_table, np.float64)
            if zipf_table.size != self.n_pages:
                raise ValueError(f"zipf_table has {zipf_table.size} entries, memory has {self.n_pages} pages")
        self.state = seed_state(seed, stream)
        self.cursor = np.array([start_page % self.n_pages], dtype=np.int64)
        self.log = np.empty(0, dtype=np.int64) if log is None else require_array("log", log, np.int64, writable=True)
        self.log_pos = np.zeros(1, dtype=np.int64)
        if missing is None:
            self.missing = np.empty(0, dtype=np.uint64)
        else:
            self.missing = require_array("missing", missing, np.uint64)
            if missing.size * WORD_BITS < self.n_pages:
                raise ValueError(f"missing covers {missing.size * WORD_BITS} pages, memory has {self.n_pages}")
        self.pending = np.full(1, -1, dtype=np.int64)

    def write(self, n_writes):
        """Perform up to `n_writes` page writes (releases the GIL while it runs); return how many were made.

        Fewer only with a map of missing pages: the next write's page is missing, and
        is `pending_page` until a later call makes that write."""
        return _write(self.memory, self.page_size, self.bitmap, self.missing, self.pending, self.pattern,
                      self.hot_pages, self.hot_share, self.stride, self.spread, self.offset, self.cdf, self.state,
                      self.cursor, int(n_writes), self.write_size, self.log, self.log_pos)

    @property
    def pending_page(self):
        """The missing page the next write waits for, or None."""
        page = int(self.pending[0])
        return None if page < 0 else page

    def logged(self):
        """Pages written so far, as recorded in the log (empty without a log)."""
        return self.log[: self.log_pos[0]]


def _spread(n_pages, seed):
    """A multiplier coprime with n_pages and an offset: a seeded bijection of page ranks."""
    import math

    rng = np.random.default_rng(seed)
    multiplier = int(rng.integers(1, max(2, n_pages))) | 1
    while math.gcd(multiplier, n_pages) != 1:
        multiplier += 2
    return multiplier % n_pages if n_pages > 1 else 0, int(rng.integers(0, n_pages))
