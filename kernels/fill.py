"""Initial guest content, page by page: zero, random, half random/half zero, or text-like.

Each page gets a kind; text-like pages are words drawn from a small vocabulary
with skewed frequencies, separated by spaces, so LZ4 shrinks them the way it
shrinks real text and code (a 2-3x ratio) rather than the extremes of zero or
random bytes. Writing words byte by byte runs at a few hundred MB/s, so a
16 MiB pool of text is generated once and each text page copies a page-sized
window of it from a random offset.
"""

import numpy as np

from kernels.checks import require_array, require_memory, require_page_size
from kernels.config import kernel
from kernels.memcopy import copy_bytes
from kernels.writers import next_random, seed_state

ZERO, RANDOM, HALF, TEXT = 0, 1, 2, 3
TEXT_POOL_BYTES = 16 << 20


@kernel
def _fill_random_words(words, first, count, state):
    for i in range(first, first + count):
        words[i] = next_random(state)


@kernel
def _fill_text(memory, first, nbytes, vocabulary, starts, word_table, state):
    position = first
    end = first + nbytes
    while position < end:
        bits = next_random(state)
        # four 16-bit draws per random word, each an index into the weighted table
        for _ in range(4):
            word = word_table[np.int64(bits & np.uint64(0xFFFF))]
            bits >>= np.uint64(16)
            for k in range(starts[word], starts[word + 1]):
                if position == end:
                    return
                memory[position] = vocabulary[k]
                position += 1


@kernel
def _zero_words(words, first, count):
    for i in range(first, first + count):
        words[i] = 0


@kernel
def _fill(memory, page_size, first_page, kinds, state, pool):
    words = memory.view(np.uint64)
    words_per_page = page_size // 8
    for i in range(kinds.size):
        kind = kinds[i]
        page = first_page + i
        first_word = page * words_per_page
        if kind == RANDOM:
            _fill_random_words(words, first_word, words_per_page, state)
        elif kind == HALF:
            _fill_random_words(words, first_word, words_per_page // 2, state)
            _zero_words(words, first_word + words_per_page // 2, words_per_page // 2)
        elif kind == TEXT:
            windows = np.uint64(pool.size - page_size + 1)
            copy_bytes(memory, page * page_size, pool, np.int64(next_random(state) % windows), page_size)
        else:
            _zero_words(words, first_word, words_per_page)


def text_vocabulary(seed, n_words=2000):
    """Words of 2-10 lowercase letters plus a trailing space, Zipf(1)-weighted.

    Returns (bytes of all words concatenated, start offsets with a final end, and
    a 65536-entry table of word numbers in which each word appears in
    proportion to its weight, so one 16-bit random draw picks a word).
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 11, n_words)
    letters = rng.integers(ord("a"), ord("z") + 1, int(lengths.sum()), dtype=np.uint8)
    pieces, offset = [], 0
    for length in lengths:
        pieces.append(letters[offset : offset + length].tobytes() + b" ")
        offset += length
    vocabulary = np.frombuffer(b"".join(pieces), dtype=np.uint8)
    starts = np.concatenate(([0], np.cumsum(lengths + 1))).astype(np.int64)
    weights = 1.0 / np.arange(1, n_words + 1)
    cdf = np.cumsum(weights) / weights.sum()
    word_table = np.searchsorted(cdf, (np.arange(65536) + 0.5) / 65536).astype(np.int64)
    return vocabulary, starts, np.minimum(word_table, n_words - 1)


def text_pool(seed, page_size):
    """The text that TEXT pages are page-sized windows of (TEXT_POOL_BYTES, at least one page)."""
    pool = np.empty(max(TEXT_POOL_BYTES, require_page_size(page_size)), dtype=np.uint8)
    _fill_text(pool, 0, pool.size, *text_vocabulary(seed), seed_state(seed, 1 << 20))
    return pool


def fill_pages(memory, page_size, kinds, seed, pool, first_page=0):
    """Write pages first_page.. of `memory` according to `kinds` (uint8, one of ZERO/RANDOM/HALF/TEXT per page).

    Every byte of those pages is written (zero pages with zeros), so they are resident
    afterwards. The content depends on `seed` and `first_page` only, so a memory filled
    in fixed slices on any number of threads is the same every time. pool: text_pool(seed, page_size).
    """
    page_size = require_page_size(page_size)
    n_pages = require_memory("memory", memory, page_size)
    require_array("memory", memory, np.uint8, writable=True)
    require_array("kinds", kinds, np.uint8)
    require_array("pool", pool, np.uint8)
    if not 0 <= first_page <= first_page + kinds.size <= n_pages:
        raise ValueError(f"kinds for pages [{first_page}, {first_page + kinds.size}) do not fit {n_pages} pages")
    if kinds.size and kinds.max() > TEXT:
        raise ValueError(f"page kind {kinds.max()} is not one of ZERO, RANDOM, HALF, TEXT")
    if pool.size < page_size:
        raise ValueError(f"the text pool holds {pool.size} bytes, less than a page")
    _fill(memory, page_size, first_page, kinds, seed_state(seed, first_page), pool)


def zero_fill(memory, first, count):
    """Write zeros to bytes [first, first + count) of `memory` (uint8): they are resident afterwards."""
    require_array("memory", memory, np.uint8, writable=True)
    if first % 8 or count % 8 or not 0 <= first <= first + count <= memory.size or memory.size % 8:
        raise ValueError(f"bytes [{first}, {first + count}) are not whole words inside {memory.size} bytes")
    _zero_words(memory.view(np.uint64), first // 8, count // 8)
