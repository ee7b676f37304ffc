"""Kernel benchmarks on a 1 GiB guest, each reported against np.copyto of the same session.

Run: pytest bench/test_kernels.py --benchmark-only -q
(`pytest` alone collects only tests/, so these never run by accident.)

Every benchmark uses `benchmark.pedantic` with a fixed number of rounds so the whole
file takes about a minute; the table at the end comes from bench/conftest.py.
"""

import numpy as np
import pytest

from emulator.vm.guest import GuestMemory, GuestSpec
from emulator.wire import protocol
from kernels import bitmap, pages
from kernels.writers import PATTERNS, WriterPattern

GUEST_BYTES = 1 << 30
SMALL_GUEST_BYTES = 16 << 20
PAGE_SIZE = 4096
N_PAGES = GUEST_BYTES // PAGE_SIZE
COPY_PAGES = 64 << 10  # 256 MiB: gather/scatter/copyto all move this much
RUNS, RUN_PAGES = 256, 256
WRITES = 1_000_000


@pytest.fixture(scope="module")
def random_guest():
    return GuestMemory(GuestSpec(GUEST_BYTES, PAGE_SIZE, fill="random", seed=1))


@pytest.fixture(scope="module")
def zero_guest():
    return GuestMemory.blank(GuestSpec(GUEST_BYTES, PAGE_SIZE, fill="zero"))


@pytest.fixture(scope="module")
def small_guest():
    return GuestMemory(GuestSpec(SMALL_GUEST_BYTES, PAGE_SIZE, fill="random", seed=1))


@pytest.fixture(scope="module")
def copy_buffer():
    """A resident 256 MiB buffer: the gather target and the scatter source."""
    return np.zeros(COPY_PAGES * PAGE_SIZE, dtype=np.uint8)


@pytest.fixture(scope="module")
def page_sets():
    """The two 64K-page sets: random pages (sorted), and 256 separate runs of 256 pages."""
    rng = np.random.default_rng(7)
    scattered = np.sort(rng.choice(N_PAGES, COPY_PAGES, replace=False)).astype(np.int64)
    # one run at the start of each chosen 512-page block, so no two runs touch
    starts = np.sort(rng.choice(N_PAGES // (2 * RUN_PAGES), RUNS, replace=False)) * (2 * RUN_PAGES)
    runs = (starts[:, None] + np.arange(RUN_PAGES)).ravel().astype(np.int64)
    assert len(protocol.pages_to_runs(runs)) == RUNS
    return {"random_64k": scattered, "runs_256x256": runs}


# bitmap ---------------------------------------------------------------------------


def test_harvest_clean(benchmark, report):
    dirty = bitmap.new_bitmap(N_PAGES)
    out = np.empty(N_PAGES, dtype=np.int64)
    found = benchmark.pedantic(bitmap.harvest, (dirty, out), rounds=200, iterations=10, warmup_rounds=1)
    assert found.size == 0
    report(guest_bytes=GUEST_BYTES)


@pytest.mark.parametrize("share", [0.01, 1.0], ids=["1pct", "all"])
def test_harvest_dirty(benchmark, report, share):
    rng = np.random.default_rng(3)
    marked = np.sort(rng.choice(N_PAGES, int(share * N_PAGES), replace=False)).astype(np.int64)
    dirty = bitmap.new_bitmap(N_PAGES)
    out = np.empty(N_PAGES, dtype=np.int64)

    def remark():
        bitmap.mark_dirty(dirty, marked)
        return (dirty, out), {}

    found = benchmark.pedantic(bitmap.harvest, setup=remark, rounds=30, warmup_rounds=1)
    np.testing.assert_array_equal(found, marked)
    report(guest_bytes=GUEST_BYTES)


# pages -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["random_64k", "runs_256x256"])
def test_gather(benchmark, report, random_guest, copy_buffer, page_sets, which):
    chosen = page_sets[which]
    nbytes = benchmark.pedantic(pages.gather, (random_guest.data, PAGE_SIZE, chosen, copy_buffer),
                                rounds=9, warmup_rounds=1)
    assert nbytes == copy_buffer.size
    report(guest_bytes=nbytes)


@pytest.mark.parametrize("which", ["random_64k", "runs_256x256"])
def test_scatter(benchmark, report, random_guest, copy_buffer, page_sets, which):
    chosen = page_sets[which]
    # write back the pages' own bytes: the guest keeps its content whatever runs next
    pages.gather(random_guest.data, PAGE_SIZE, chosen, copy_buffer)
    benchmark.pedantic(pages.scatter, (random_guest.data, PAGE_SIZE, chosen, copy_buffer),
                       rounds=9, warmup_rounds=1)
    report(guest_bytes=copy_buffer.size)


def test_copyto_256mib(benchmark, report, random_guest, copy_buffer):
    source = random_guest.data[: copy_buffer.size]
    benchmark.pedantic(np.copyto, (copy_buffer, source), rounds=9, warmup_rounds=1)
    report(guest_bytes=copy_buffer.size)


@pytest.mark.parametrize("fill", ["zero", "random"])
def test_split_zero_pages(benchmark, report, request, fill):
    guest = request.getfixturevalue(f"{fill}_guest")
    every_page = np.arange(guest.n_pages, dtype=np.int64)
    zero, nonzero = benchmark.pedantic(pages.split_zero_pages, (guest.data, PAGE_SIZE, every_page),
                                       rounds=7, warmup_rounds=1)
    assert (zero.size, nonzero.size) == ((guest.n_pages, 0) if fill == "zero" else (0, guest.n_pages))
    report(guest_bytes=guest.data.size)


def test_page_digests(benchmark, report, random_guest):
    out = np.empty(random_guest.n_pages, dtype=np.uint64)
    benchmark.pedantic(pages.page_digests, (random_guest.data, PAGE_SIZE), {"out": out}, rounds=7, warmup_rounds=1)
    report(guest_bytes=random_guest.data.size)


@pytest.mark.parametrize("fill", ["zero", "random"])
def test_split_zero_and_digest(benchmark, report, request, fill):
    """The source's scan with a running digest: zero test and hash in one read of each page."""
    guest = request.getfixturevalue(f"{fill}_guest")
    every_page = np.arange(guest.n_pages, dtype=np.int64)
    table = np.zeros(guest.n_pages, dtype=np.uint64)
    zero, nonzero, *_ = benchmark.pedantic(pages.split_zero_and_digest, (guest.data, PAGE_SIZE, every_page, table),
                                           rounds=7, warmup_rounds=1)
    assert (zero.size, nonzero.size) == ((guest.n_pages, 0) if fill == "zero" else (0, guest.n_pages))
    report(guest_bytes=guest.data.size)


@pytest.mark.parametrize("which", ["random_64k", "runs_256x256"])
def test_scatter_and_digest(benchmark, report, random_guest, copy_buffer, page_sets, which):
    """The destination's placement with a running digest: copy and hash in one read of each page."""
    chosen = page_sets[which]
    pages.gather(random_guest.data, PAGE_SIZE, chosen, copy_buffer)
    table = np.zeros(random_guest.n_pages, dtype=np.uint64)
    benchmark.pedantic(pages.scatter_and_digest, (random_guest.data, PAGE_SIZE, chosen, copy_buffer, table),
                       rounds=9, warmup_rounds=1)
    report(guest_bytes=copy_buffer.size)


# writers ---------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("size", ["1gib", "16mib"])
def test_writer(benchmark, report, request, size, pattern):
    guest = request.getfixturevalue("random_guest" if size == "1gib" else "small_guest")
    writer = WriterPattern(guest.data, PAGE_SIZE, guest.dirty, pattern, seed=5)
    benchmark.pedantic(writer.write, (WRITES,), rounds=5, warmup_rounds=1)
    report(writes=WRITES, page_size=PAGE_SIZE)
