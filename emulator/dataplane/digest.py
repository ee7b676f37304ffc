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
Threads that place distinct pages at once (the destination's data channels)
each absorb into a part of their own (`part()`); the value adds the parts up,
as the sum and the XOR of the whole are the sum and XOR of the parts.
"""

import numpy as np

from kernels import pages

MASK_64 = (1 << 64) - 1


class DigestPart:
    """Changes to per-page digests in `table` (uint64, one per page of `page_size` bytes), as one thread
    makes them: what the table's sum (mod 2**64) and XOR moved by since `total` and `xor`."""

    def __init__(self, table, page_size, total=0, xor=0):
        self.table, self.page_size = table, page_size
        self.total, self.xor = total, xor

    def absorb(self, delta):
        """Add a kernel's (sum delta, xor delta) for the entries it replaced."""
        total, xor = delta
        self.total = (self.total + total) & MASK_64
        self.xor ^= xor

    def update_zero(self, page_numbers):
        """Pages `page_numbers` are now all zero."""
        self.absorb(pages.replace_zero_digests(self.page_size, page_numbers, self.table))


class RunningDigest(DigestPart):
    """Per-page digests of a memory of `n_pages` pages, starting all zero (as a fresh guest is).

    table: the digest of every page (uint64), for kernels to update in place.
    Kernels on several threads may replace entries of distinct pages at once; each
    thread absorbs their deltas into a part of its own (`part()`), never into another's.
    """

    def __init__(self, n_pages, page_size):
        table = pages.zero_page_digests(page_size, np.arange(n_pages))
        super().__init__(table, page_size, int(table.sum(dtype=np.uint64)),
                         int(np.bitwise_xor.reduce(table)) if n_pages else 0)
        self._parts = []

    def part(self):
        """A DigestPart of this digest's table for one more thread; its changes count in value()."""
        part = DigestPart(self.table, self.page_size)
        self._parts.append(part)
        return part

    def value(self):
        """The memory digest, in the same hex form as kernels.pages.memory_digest: call it once the parts'
        threads have placed what they were given."""
        total, xor = self.total, self.xor
        for part in self._parts:
            total, xor = (total + part.total) & MASK_64, xor ^ part.xor
        return pages.format_digest(total, xor)
