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
def _fill(memory, page_size, kinds, state, pool):
    words = memory.view(np.uint64)
    words_per_page = page_size // 8
    for page in range(kinds.size):
        kind = kinds[page]
        first_word = page * words_per_page
        if kind == RANDOM:
            _fill_random_words(words, first_word, words_per_page, state)
        elif kind == HALF:
            _fill_random_words(words, first_word, words_per_page // 2, state)
        elif kind == TEXT:
            windows = np.uint64(pool.size - page_size + 1)
            copy_bytes(memory, page * page_size, pool, np.int64(next_random(state) % windows), page_size)


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


def fill_pages(memory, page_size, kinds, seed):
    """Write every page of `memory` according to `kinds` (uint8, one of ZERO/RANDOM/HALF/TEXT per page).

    ZERO pages are written with zeros too, so the memory is resident afterwards.
    """
    page_size = require_page_size(page_size)
    n_pages = require_memory("memory", memory, page_size)
    require_array("memory", memory, np.uint8, writable=True)
    require_array("kinds", kinds, np.uint8)
    if kinds.size != n_pages:
        raise ValueError(f"kinds has {kinds.size} entries, memory has {n_pages} pages")
    if kinds.size and kinds.max() > TEXT:
        raise ValueError(f"page kind {kinds.max()} is not one of ZERO, RANDOM, HALF, TEXT")
    memory.fill(0)
    state = seed_state(seed, 1 << 20)
    pool = np.empty(max(TEXT_POOL_BYTES, page_size), dtype=np.uint8)
    _fill_text(pool, 0, pool.size, *text_vocabulary(seed), state)
    _fill(memory, page_size, kinds, state, pool)
