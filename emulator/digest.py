"""A running digest of guest memory, updated page by page as pages cross.

Each side keeps the 64-bit digest of every page as it last sent (source) or
applied (destination) it, plus the sum and XOR of all of them. Replacing one
page's digest updates both in O(1), so at the end of a migration the digest
of the whole memory is already known: the blackout compares 32 hex digits
instead of hashing gigabytes. The value equals kernels.pages.memory_digest
of memory with the same content, so the source can re-hash its paused memory
later and prove that what it sent was what it had.

The kernels that read pages anyway (the source's zero test, the destination's
copy into place) hash them on the way and replace their entries of `table`
themselves; they return what the sum and XOR changed by, which `absorb` adds.
"""

import numpy as np

from kernels import pages

MASK_64 = (1 << 64) - 1


class RunningDigest:
    """Per-page digests of a memory of `n_pages` pages, starting all zero (as a fresh guest is).

    table: the digest of every page (uint64), for kernels to update in place.
    Not thread-safe: kernels on worker threads may replace entries of distinct
    pages at once, but their deltas are absorbed on one thread.
    """

    def __init__(self, n_pages, page_size):
        self.page_size = page_size
        self.table = pages.zero_page_digests(page_size, np.arange(n_pages))
        self.total = int(self.table.sum(dtype=np.uint64))
        self.xor = int(np.bitwise_xor.reduce(self.table)) if n_pages else 0

    def absorb(self, delta):
        """Add a kernel's (sum delta, xor delta) for the entries it replaced."""
        total, xor = delta
        self.total = (self.total + total) & MASK_64
        self.xor ^= xor

    def update_zero(self, page_numbers):
        """Pages `page_numbers` are now all zero."""
        self.absorb(pages.replace_zero_digests(self.page_size, page_numbers, self.table))

    def value(self):
        """The memory digest, in the same hex form as kernels.pages.memory_digest."""
        return pages.format_digest(self.total, self.xor)
