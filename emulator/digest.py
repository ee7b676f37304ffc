"""A running digest of guest memory, updated page by page as pages cross.

Each side keeps the 64-bit digest of every page as it last sent (source) or
applied (destination) it, plus the sum and XOR of all of them. Replacing one
page's digest updates both in O(1), so at the end of a migration the digest
of the whole memory is already known: the blackout compares 32 hex digits
instead of hashing gigabytes. The value equals kernels.pages.memory_digest
of memory with the same content, so the source can re-hash its paused memory
later and prove that what it sent was what it had.
"""

import numpy as np

from kernels import pages


class RunningDigest:
    """Per-page digests of a memory of `n_pages` pages, starting all zero (as a fresh guest is)."""

    def __init__(self, n_pages, page_size):
        self.page_size = page_size
        self.table = pages.zero_page_digests(page_size, np.arange(n_pages))
        self.total = int(self.table.sum(dtype=np.uint64))
        self.xor = int(np.bitwise_xor.reduce(self.table)) if n_pages else 0

    def update(self, page_numbers, digests):
        """Pages `page_numbers` now have these digests (uint64, same order)."""
        page_numbers = np.asarray(page_numbers, dtype=np.int64)
        old = self.table[page_numbers]
        self.total = (self.total + int(digests.sum(dtype=np.uint64)) - int(old.sum(dtype=np.uint64))) & 0xFFFFFFFFFFFFFFFF
        self.xor ^= int(np.bitwise_xor.reduce(old ^ digests)) if old.size else 0
        self.table[page_numbers] = digests

    def update_batch(self, data, page_numbers):
        """Pages `page_numbers` now hold the consecutive pages of `data` (uint8)."""
        self.update(page_numbers, pages.batch_digests(data, self.page_size, page_numbers))

    def update_zero(self, page_numbers):
        """Pages `page_numbers` are now all zero."""
        self.update(page_numbers, pages.zero_page_digests(self.page_size, page_numbers))

    def value(self):
        """The memory digest, in the same hex form as kernels.pages.memory_digest."""
        return pages.format_digest(self.total, self.xor)
