"""Guest memory: a flat byte array of pages, its dirty bitmap, and its initial content.

Content profiles (the `fill` option):
    zero     every page zero (a freshly booted, idle guest);
    random   every page random bytes (incompressible: encrypted or compressed data);
    half     each page's first half random, second half zero (about 2x with LZ4);
    text     text-like words (about 2x with LZ4, like logs and source code);
    mixed    a blend with many zero pages, as a typical running guest has:
             40% zero, 25% text, 20% half, 15% random, page kinds shuffled by seed.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from emulator.core import fields
from emulator.vm import allocator
from kernels import bitmap, fill, pages

FILL_PROFILES = ("zero", "random", "half", "text", "mixed")
MIXED_SHARES = {fill.ZERO: 0.40, fill.TEXT: 0.25, fill.HALF: 0.20, fill.RANDOM: 0.15}
MAX_PAGES = 1 << 32  # page numbers are 32-bit on the wire (emulator.wire.protocol.PAGE_NUMBER_DTYPE)
FILL_SLICE_PAGES = 16384  # pages written per task when filling or zeroing: 64 MiB of 4 KiB pages
_UNIFORM_KINDS = {"zero": fill.ZERO, "random": fill.RANDOM, "half": fill.HALF, "text": fill.TEXT}


def page_kinds(profile, n_pages, seed):
    """The content kind of every page (uint8) for a fill profile."""
    if profile in _UNIFORM_KINDS:
        return np.full(n_pages, _UNIFORM_KINDS[profile], dtype=np.uint8)
    if profile != "mixed":
        raise ValueError(f"unknown fill profile {profile!r}: expected one of {', '.join(FILL_PROFILES)}")
    counts = [int(round(share * n_pages)) for share in MIXED_SHARES.values()]
    counts[0] += n_pages - sum(counts)
    kinds = np.repeat(np.array(list(MIXED_SHARES), dtype=np.uint8), counts)
    np.random.default_rng(seed).shuffle(kinds)
    return kinds


@dataclass(frozen=True)
class GuestSpec:
    """What a guest is: its size, page size, content profile and seed (recorded in reports)."""

    memory_bytes: int
    page_size: int = 4096
    fill: str = "mixed"
    seed: int = 0

    RULES: ClassVar[dict] = {
        "memory_bytes": fields.size(1),
        "page_size": fields.power_of_two(64),  # the page kernels' minimum (kernels.checks)
        "fill": fields.one_of(FILL_PROFILES),
        "seed": fields.whole(0, 2**64 - 1),
    }

    def __post_init__(self):
        fields.check(self, self.RULES)
        if self.memory_bytes % self.page_size:
            raise ValueError(
                f"memory size must be a positive multiple of the page size ({self.page_size} B), got {self.memory_bytes}"
            )
        if self.n_pages > MAX_PAGES:
            raise ValueError(f"a guest has at most {MAX_PAGES:,} pages (page numbers are 32-bit on the wire), "
                             f"got {self.n_pages:,} of {self.page_size} B")

    @property
    def n_pages(self):
        return self.memory_bytes // self.page_size


class GuestMemory:
    """A guest's RAM (`data`, flat uint8) and dirty bitmap (`dirty`, uint64 words)."""

    def __init__(self, spec, *, populate=True, data=None):
        """Allocate the memory; with `populate`, write the profile's content (every page resident).

        data: the bytes to use instead (flat uint8 of spec.memory_bytes): a guest disk's
        blocks are pages whose bytes live in a mapped file (emulator.vm.disk)."""
        self.spec = spec
        self.page_size = spec.page_size
        self.n_pages = spec.n_pages
        if data is None:
            data = np.empty(spec.memory_bytes, dtype=np.uint8)
        elif data.dtype != np.uint8 or data.shape != (spec.memory_bytes,):
            raise ValueError(f"data must be {spec.memory_bytes} bytes (uint8), got {data.dtype} {data.shape}")
        self.data = data
        self.dirty = bitmap.new_bitmap(self.n_pages)
        if populate:
            kinds = page_kinds(spec.fill, self.n_pages, spec.seed)
            pool = fill.text_pool(spec.seed, self.page_size)
            self._in_slices(lambda first, count: fill.fill_pages(self.data, self.page_size, kinds[first : first + count],
                                                                 spec.seed, pool, first))

    @classmethod
    def resident(cls, spec, *, blank=False):
        """`spec`'s memory, with its content (or zeroed, with `blank`), allocated only if this host can hold it
        now: else MemoryShortfall naming guest.memory_bytes (see emulator.vm.allocator.holding)."""
        with allocator.holding(spec.memory_bytes, "guest.memory_bytes"):
            return cls.blank(spec) if blank else cls(spec)

    @classmethod
    def blank(cls, spec):
        """A zeroed, resident memory of `spec`'s size: a destination ready to receive pages."""
        guest = cls(spec, populate=False)
        page_size = guest.page_size
        guest._in_slices(lambda first, count: fill.zero_fill(guest.data, first * page_size, count * page_size))
        return guest

    def _in_slices(self, work):
        """Call work(first_page, page_count) for fixed slices of FILL_SLICE_PAGES, on every CPU.

        The kernels release the GIL, so first-touch page faults and writes run in parallel;
        slices are fixed, so the content does not depend on the number of CPUs.
        """
        starts = range(0, self.n_pages, FILL_SLICE_PAGES)
        with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, len(starts)))) as pool:
            list(pool.map(lambda first: work(first, min(FILL_SLICE_PAGES, self.n_pages - first)), starts))

    def page(self, number):
        """A view of one page's bytes."""
        if not 0 <= number < self.n_pages:
            raise IndexError(f"page {number} is outside [0, {self.n_pages})")
        return self.data[number * self.page_size : (number + 1) * self.page_size]

    def digest(self):
        """Hex digest of the whole memory (equal content, equal digest), on every CPU.

        The digest kernel releases the GIL, so each thread hashes its own
        slice of the pages into its own slice of one digest array.
        """
        page_digests = np.empty(self.n_pages, dtype=np.uint64)
        workers = max(1, min(os.cpu_count() or 1, self.n_pages // 4096 or 1))
        bounds = np.linspace(0, self.n_pages, workers + 1).astype(int)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(
                lambda i: pages.page_digests(self.data, self.page_size, int(bounds[i]), int(bounds[i + 1] - bounds[i]),
                                             page_digests[bounds[i] : bounds[i + 1]]),
                range(workers),
            ))
        return pages.combine_digests(page_digests)

    def harvest(self, out=None):
        """Take and clear the dirty set: ascending page numbers (see kernels.bitmap.harvest)."""
        return bitmap.harvest(self.dirty, out)

    def dirty_count(self):
        """How many pages are dirty now, without clearing them."""
        return bitmap.count_dirty(self.dirty)
